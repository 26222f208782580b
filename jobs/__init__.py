"""Thin job entry points: parse a config, call the library. Each runs as `python -m jobs.<name>`."""
