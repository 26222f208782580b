"""The VAR transformer: model, loading, sampling, token dataset and the Ray Train job.

    from pipeline.var import load_var
    model = load_var("var_d16.pth", config={"depth": 16}, tokenizer=tok)
    logits = model(label_B, tok.to_var_input(tokens))        # (B, L, V)
"""

from __future__ import annotations

from pipeline.var.loading import infer_config, load_trained, load_var, tokenizer_dims, var_config
from pipeline.var.model import VAR, VARConfig

__all__ = ["VAR", "VARConfig", "infer_config", "load_trained", "load_var", "tokenizer_dims", "var_config"]
