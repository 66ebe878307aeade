"""The exporter's soak (issue 14): `make soak`, `python -m soak`; docs/soak.md."""
