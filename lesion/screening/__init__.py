"""Screening numbers: metrics, the operating point, calibration, evaluation, fairness and robustness reports."""
