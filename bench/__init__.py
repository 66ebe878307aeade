"""tapttrace's cost, measured: `sudo .venv/bin/python -m bench` (see docs/benchmarks.md)."""
