"""Hypothesis settings shared by the fuzz tests: bounded in `make test`, scaled up by `make fuzz`."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SCALE = int(os.environ.get("TINYFAAS_FUZZ_SCALE", "1"))  # `make fuzz` sets 100


def fuzz(examples: int) -> settings:
    """`examples` runs in `make test` (a few seconds in all), SCALE times as many under `make fuzz`."""
    return settings(max_examples=examples * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
