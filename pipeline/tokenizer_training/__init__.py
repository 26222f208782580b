"""Train tokenizers (VAR multi-scale VQ-VAE, GQ, GSQ) on WebDataset shards with Ray Train.

    from pipeline.tokenizer_training.config import TokenizerTrainConfig
    from pipeline.tokenizer_training.train import fit
    result = fit(TokenizerTrainConfig(train_shards="data/train-{000000..000009}.tar", ...))
    tok = load_tokenizer(cfg.family, checkpoint=result.export, config=...)   # see <run>/tokenizer.json
"""
