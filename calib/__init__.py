"""Calibration: data sources, observers and the collection of activation ranges."""
