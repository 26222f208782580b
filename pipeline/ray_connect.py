"""Joining Ray the same way in every job: `--address`, else RAY_ADDRESS, else a new local Ray.

Plain `ray.init()` with neither given attaches to whatever Ray this machine started last
(/tmp/ray/ray_current_cluster), e.g. a test cluster or another user's job; the documented
behaviour of our jobs is "no address: start a local Ray", hence address="local".
"""

from __future__ import annotations

import os
from typing import Any


def resolve_address(address: str | None) -> str:
    return address or os.environ.get("RAY_ADDRESS") or "local"


def init_ray(address: str | None, **kwargs: Any) -> bool:
    """ray.init unless Ray is already initialised in this process; True when this call connected."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=resolve_address(address), **kwargs)
    return True
