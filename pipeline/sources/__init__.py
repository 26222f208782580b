"""Where samples come from: shard listing, streaming tar reading and image decoding.

Each step is a plain function or generator so the runner can chain them:
`expand_shards` (patterns -> shard list) -> `iter_samples` (one shard -> samples in tar order)
-> `decode_sample` (sample -> RGB image or a bad-input status).
"""
