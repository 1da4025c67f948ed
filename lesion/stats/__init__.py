"""Screening numbers: metrics, calibration fits, the operating point, bootstrap, fairness and subgroup arithmetic, and
the quality gate's measures (tensors and frames; no model)."""
