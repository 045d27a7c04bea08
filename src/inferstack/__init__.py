"""inferstack: real-time ML serving for ranking and personalisation."""

__version__ = "0.1.0"
