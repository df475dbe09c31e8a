"""Calibration (round-to-nearest): observers to scales, bias correction, ECAQ."""
