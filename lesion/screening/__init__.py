"""Screening workflows: predict a split, calibrate and fit the quality gate after fit, evaluate, reports, checkpoint
writers (the numbers they use are lesion.stats's)."""
