PY := .venv/bin/python
DVC := .venv/bin/dvc

.PHONY: setup run test bench clean

.venv/.installed: requirements.txt requirements-dev.txt
	python3.11 -m venv .venv
	.venv/bin/pip install -q -r requirements-dev.txt
	touch $@

setup: .venv/.installed

run: setup  ## set up and run the pipeline (synthetic cohort by default)
	PATH=$(CURDIR)/.venv/bin:$$PATH $(DVC) repro

test: setup  ## set up and run the tests
	PATH=$(CURDIR)/.venv/bin:$$PATH $(PY) -m pytest -q tests

bench: setup  ## EF-method benchmark on ../shared/data/camus (see docs/benchmarks.md)
	$(PY) benchmarks/ef_reference.py --root ../shared/data/camus
