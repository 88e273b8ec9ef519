"""Reproducible seeds and ids: every random stream of a search is derived from the run's seed and
where it is used (task, iteration, generation, candidate), so the same settings give the same search."""
from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Callable
from typing import Any


def seed_for(*parts: Any) -> int:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def id_stream(rng: random.Random) -> Callable[[str], str]:
    """Unique ids that are also reproducible for a given seed (uuid from the run's random stream)."""
    def new_id(prefix: str) -> str:
        return f"{prefix}{uuid.UUID(int=rng.getrandbits(128), version=4).hex[:16]}"
    return new_id
