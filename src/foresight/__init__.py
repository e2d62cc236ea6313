"""foresight: train language models with future-aware objectives (TOP, MTP, DS-MTP) beside NTP."""

__version__ = "0.1.0"
