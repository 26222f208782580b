"""The tokenizer zoo behind one interface: `load_tokenizer(name, checkpoint, config)`."""

from pipeline.tokenizers.base import (
    MultiScaleTokens,
    Tokenizer,
    available_tokenizers,
    load_tokenizer,
    register_tokenizer,
)
from pipeline.images import PreprocessConfig
from pipeline.tokenizers.rebuild import TokenizerMismatch, tokenizer_from_metadata

__all__ = ["MultiScaleTokens", "PreprocessConfig", "Tokenizer", "available_tokenizers",
           "TokenizerMismatch", "load_tokenizer", "register_tokenizer", "tokenizer_from_metadata"]
