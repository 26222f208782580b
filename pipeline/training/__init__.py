"""Pieces every Ray Train job shares (curves of a metrics JSONL, ...), independent of any model."""
