"""How long the fuzz tests run: short under `make test`, a long campaign under `make fuzz`.

`FUZZ=long` multiplies each fuzz test's examples by `FUZZ_SCALE` (default 100);
docs/testing.md describes both.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

LONG = os.environ.get("FUZZ", "") == "long"
SCALE = int(os.environ.get("FUZZ_SCALE", "100")) if LONG else 1


def fuzz(examples: int, **kwargs: Any) -> settings:
    """Settings for one fuzz test: `examples` examples by default, SCALE times as many with FUZZ=long."""
    suppress = list(kwargs.pop("suppress_health_check", []))
    if LONG:
        suppress.append(HealthCheck.too_slow)
    return settings(max_examples=examples * SCALE, deadline=None, suppress_health_check=suppress, **kwargs)
