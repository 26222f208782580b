"""Quantizers behind one interface (see `base`): one module per quantizer family."""

from pipeline.tokenizers.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    channels_last_rows,
    nearest_code_cosine,
    nearest_code_l2,
)

__all__ = ["Quantizer", "QuantizerOutput", "channels_last_rows", "nearest_code_cosine", "nearest_code_l2"]
