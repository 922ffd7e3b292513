# mlp-sweep: every target sets up what it needs, so any of them works first on a fresh clone.
comma := ,
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The exact versions every install here uses (make lock refreshes it): a fresh clone tests what
# main was tested with. PIP_CONSTRAINT, not -c: pip hands it to the build's own environment too.
LOCK := .ci/constraints.txt
LOCKED := PIP_CONSTRAINT=$(CURDIR)/$(LOCK)
# What the lock covers: the package with every extra but the benchmark's torch.
EXTRAS := dev,postgres,s3,pandas,dask,viz

STORAGE ?= sqlite:///runs/sweep.db
# One worker per core, one BLAS thread each: the fastest split measured (make bench).
JOBS ?= $(shell nproc 2>/dev/null || echo 1)

.PHONY: install data train sweep sweep-pruned sweep-tpe best pareto init gradcheck bench bench-scale \
	report status dashboard test test-slow test-newest lock lint format clean

DEV_STAMP := $(VENV)/.installed-dev

install: $(STAMP)

# What the commands need (make sweep, report, status, ...); the tests' extras come with make test.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(LOCKED) $(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(LOCKED) $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Refresh the lock: the newest versions pyproject.toml's ranges allow, for Python 3.11 on Linux.
# Then run make test (and make test-newest before raising a range).
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --upgrade --strip-extras --allow-unsafe --all-build-deps \
		--no-emit-find-links --no-emit-index-url $(foreach e,$(subst $(comma), ,$(EXTRAS)),--extra $(e)) \
		--output-file $(LOCK) pyproject.toml

# New releases as a check, not as a broken main: the storage, queue and checkpoint tests in a
# second environment with the newest versions the ranges allow, unlocked (a few minutes).
NEWEST := .venv-newest
test-newest: data
	rm -rf $(NEWEST)
	$(PYTHON) -m venv $(NEWEST)
	$(NEWEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager \
		-e '.[dev]'
	$(NEWEST)/bin/python -m pip list --format=freeze | $(BIN)/python -m tests.newer $(LOCK)
	$(NEWEST)/bin/python -m pytest -q -m 'not slow' tests/sweep/test_storage.py \
		tests/sweep/test_queue.py tests/sweep/test_queue_resume.py tests/sweep/test_writeback.py \
		tests/sweep/test_checkpoint.py tests/sweep/test_checkpoint_cases.py \
		tests/sweep/test_artifacts.py tests/test_versions.py -k 'not environment_under_test'

data: $(STAMP)
	$(BIN)/sweep data

train: data
	$(BIN)/sweep train

# The notebook's 24-point grid on the default database, resumable: rerun to finish.
sweep: data
	$(BIN)/sweep run studies/seed-grid.toml --storage $(STORAGE) --jobs $(JOBS)
	$(BIN)/sweep report studies/seed-grid.toml --storage $(STORAGE)

# The same grid with successive halving: the same best point in about a quarter of the time.
sweep-pruned: data
	$(BIN)/sweep run studies/seed-grid-pruned.toml --storage $(STORAGE) --jobs $(JOBS)
	$(BIN)/sweep report studies/seed-grid-pruned.toml --storage $(STORAGE)

sweep-tpe: data
	$(BIN)/sweep run studies/tpe-budget.toml --storage $(STORAGE) --jobs $(JOBS)
	$(BIN)/sweep report studies/tpe-budget.toml --storage $(STORAGE)

# The best MLP inside the budget: TPE over depth, widths, distortions and optimiser; then test,
# once (about 50 minutes on 2 cores).
best: data
	$(BIN)/sweep run studies/best-mlp.toml --storage $(STORAGE) --jobs $(JOBS)
	$(BIN)/sweep evaluate studies/best-mlp.toml --storage $(STORAGE)
	$(BIN)/sweep report studies/best-mlp.toml --storage $(STORAGE)

# Accuracy against size: NSGA-II over one and two hidden layers inside the budget; prints the
# Pareto front and writes its report.
pareto: data
	$(BIN)/sweep run studies/pareto.toml --storage $(STORAGE) --jobs $(JOBS)
	$(BIN)/sweep report studies/pareto.toml --storage $(STORAGE)

# The notebook's initialisation study (Zeros, Normal, Glorot) and its loss figure.
init: data
	$(BIN)/sweep run studies/seed-init.toml --storage $(STORAGE) --jobs $(JOBS)
	$(BIN)/sweep report studies/seed-init.toml --storage $(STORAGE) --log-loss

gradcheck: data
	$(BIN)/sweep gradcheck --out runs/gradcheck

# Benchmarks, not tests: medians against baselines measured in the same run.
bench: data
	$(BIN)/python -m tests.bench.training

# What a study costs as it grows (10^3, 10^5, 10^6 trials, SQLite and a local PostgreSQL): a
# worker's claim and ask, a top-up, status, report and the dashboard; about 25 min.
bench-scale: data $(DEV_STAMP)
	$(BIN)/python -m tests.bench.scale

report: $(STAMP)
	$(BIN)/sweep report all --storage $(STORAGE)

status: $(STAMP)
	$(BIN)/sweep status --storage $(STORAGE)

dashboard: $(STAMP)
	$(BIN)/sweep dashboard --storage $(STORAGE)

# The README's test command: every test but those marked slow (pyproject.toml's addopts).
test: data $(DEV_STAMP)
	$(BIN)/python -m pytest --durations=20

# The tests marked slow (the full-MNIST trainings; kills, races and end-to-end runs of ~3 s or
# more): CI runs them after make test, which stays a quick loop.
test-slow: data $(DEV_STAMP)
	$(BIN)/python -m pytest -m slow --durations=20

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(NEWEST) build *.egg-info .pytest_cache .ruff_cache
