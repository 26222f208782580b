"""The Ray side of the tokenize job: the shard actor, the driver's pull scheduler, progress, stats."""
