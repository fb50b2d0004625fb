PY := .venv/bin/python
DVC := .venv/bin/dvc
# The stages call `python` and `dvc`: the project's environment comes first on PATH.
ENV := PATH=$(CURDIR)/.venv/bin:$$PATH

.PHONY: setup params run test test-fast lint deps bench clean gpu-record gpu-wheels

.venv/.installed: requirements.txt requirements-dev.txt pyproject.toml
	python3.11 -m venv .venv
	.venv/bin/pip install -q -r requirements-dev.txt
	.venv/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

setup: .venv/.installed

params: setup  ## write params.yaml from conf/ (what `dvc exp run` does before running)
	$(PY) -c 'from echoef.params import compose; compose("params.yaml")'

run: setup  ## set up and run the pipeline (synthetic cohort by default)
	$(ENV) $(DVC) repro

# One test worker per core, each test file whole on one worker (the end-to-end file builds its DVC run
# once), one thread each: two workers of two threads on two cores spin against each other
# (docs/experiment-log.md, "The test suite on two cores").
# At most four workers: each holds its own torch, and a container may report more cores than it has.
# In collection order (--no-loadscope-reorder), which puts the end-to-end file first (tests/conftest.py).
XDIST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
XDIST := -n $(XDIST_WORKERS) --dist loadfile --no-loadscope-reorder
TEST_ENV := $(ENV) OMP_NUM_THREADS=1

test: setup  ## the whole suite, as CI runs it (needs ../shared/data for the real-data tests)
	$(TEST_ENV) $(PY) -m pytest -q $(XDIST) tests

test-fast: setup  ## everything but the end-to-end runs (marked slow)
	$(TEST_ENV) $(PY) -m pytest -q $(XDIST) -m "not slow" tests

lint: setup  ## style, the layer contract of the package (pyproject.toml), and dvc.yaml's code deps
	.venv/bin/ruff check .
	.venv/bin/lint-imports
	$(PY) -m echoef.app.codedeps dvc.yaml --check

deps: setup  ## write each stage's code deps into dvc.yaml from the import graph
	$(PY) -m echoef.app.codedeps dvc.yaml

bench: setup  ## EF-method benchmark on ../shared/data/camus (see docs/benchmarks.md)
	$(PY) benchmarks/ef_reference.py --root ../shared/data/camus

gpu-record:  ## on a CUDA machine: the GPU profile under a deadline, logs and record in OUT (README: The GPU run)
	python3 benchmarks/gpu_record.py --out $(or $(OUT),gpu-run) $(if $(WHEELS),--wheels $(WHEELS)) $(if $(DATA),--data $(DATA)) \
		$(foreach name,$(LEAVE),--leave $(name)) --deadline-s $(or $(DEADLINE),540)

gpu-wheels: setup  ## the wheels a CUDA machine lacks, for its Python (README: The GPU run)
	$(PY) benchmarks/gpu_wheels.py --out $(or $(WHEELS),wheels) --python-version $(or $(PYTHON_VERSION),3.12) \
		$(if $(MACHINE),--installed $(MACHINE)) $(foreach name,$(LEAVE),--leave $(name))
