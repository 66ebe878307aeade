"""What every property-based test here shares (tests/test_fuzz_*.py).

Reproducible: derandomize=True draws the same examples on every run and every machine, and no
example database is kept, so CI fails on exactly what a developer's run fails on. No deadline:
the machine is shared, and speed belongs in bench/, not in a test's verdict."""
from __future__ import annotations

from hypothesis import HealthCheck, settings

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# For properties whose every example costs a process or a whole pipeline run.
FUZZ_SLOW = settings(FUZZ, max_examples=60)
