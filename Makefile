# Each target sets itself up first (scripts/setup.sh is quick when nothing changed).
.PHONY: setup demo test doctor bench
setup:
	@bash scripts/setup.sh
demo: setup
	.venv/bin/tapttrace demo
test: setup
	.venv/bin/pytest -q
doctor: setup
	.venv/bin/tapttrace doctor
bench: setup
	.venv/bin/python -m bench
