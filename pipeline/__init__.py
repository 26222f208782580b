"""scaletok: distributed multi-scale pre-tokenization for next-scale-prediction image generators."""

__version__ = "0.1.0"
