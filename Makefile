# Each target sets itself up first (scripts/setup.sh is quick when nothing changed).
.PHONY: setup demo test test-kernels doctor bench soak
setup:
	@bash scripts/setup.sh
demo: setup
	.venv/bin/tapttrace demo
test: setup
	.venv/bin/pytest -q
# The kernel matrix (docs/kernels.md): stock Debian 5.10, 6.1 and 6.12 under qemu, and this kernel.
test-kernels: setup
	.venv/bin/python -m tests.kernels.matrix matrix
doctor: setup
	.venv/bin/tapttrace doctor
bench: setup
	.venv/bin/python -m bench
# The exporter's soak (docs/soak.md): 30 minutes, or SOAK_MINUTES=N; not in CI (tests/test_soak.py runs a 1-minute one).
soak: setup
	.venv/bin/python -m soak
