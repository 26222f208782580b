"""Where tokens go: the Parquet schema and writer, the per-shard manifest commit, and verify."""
