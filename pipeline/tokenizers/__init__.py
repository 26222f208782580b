"""The tokenizer zoo behind one interface: `load_tokenizer(name, checkpoint, config)`."""

from pipeline.tokenizers.base import (
    MultiScaleTokens,
    Tokenizer,
    available_tokenizers,
    load_tokenizer,
    register_tokenizer,
)
from pipeline.tokenizers.preprocess import PreprocessConfig

__all__ = ["MultiScaleTokens", "PreprocessConfig", "Tokenizer", "available_tokenizers",
           "load_tokenizer", "register_tokenizer"]
