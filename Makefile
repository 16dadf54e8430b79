# `make train` and `make test` work on a fresh machine with Python 3.11+ and make: each creates .venv
# the first time and reinstalls only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test test-fast docs bench lint format clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@# The GPU machine has no network and no ml_collections: benchmarks/gpu.sh installs it from this wheel.
	$(BIN)/python -m pip download --quiet --no-deps --dest benchmarks/wheels \
	  "ml_collections==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("ml_collections"))')"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py --config configs/default.py --workdir runs/default

test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .
	site=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --quiet --site-dir $$site && rm -rf $$site
	$(BIN)/python -m pytest -n 2 --durations=15

# The edit-test loop (under 2 minutes): everything but the tests marked slow (training, processes, 64k,
# meshes, whole-model training steps). Both use two pytest-xdist workers: most tests wait on one-core compiles.
test-fast: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -n 2 -m "not slow"

# The documentation site, into site/ (`python -m mkdocs serve` to browse it while editing).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

# The CPU benchmark set (about 40 minutes on 2 cores); quality, recall and the soak train models and take
# longer: run them by hand (`python -m benchmarks.quality`, `.recall`, `.soak`).
bench: $(STAMP)
	$(BIN)/python -m benchmarks.scaling --repeats 3
	$(BIN)/python -m benchmarks.throughput
	$(BIN)/python -m benchmarks.decode
	$(BIN)/python -m benchmarks.profile_conv

lint format: $(STAMP)
	$(BIN)/python -m ruff format .
	$(BIN)/python -m ruff check --fix .

clean:
	rm -rf $(VENV) runs site .pytest_cache
