"""The GPU tests reuse the tokenize job's corpus and tokenizer fixtures."""

from tests.job.conftest import corpus_dir, corpus_pattern, var_tokenizer_json  # noqa: F401
