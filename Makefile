# Two commands a new user needs (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
CORES ?= 2
export PATH := $(BIN):$(PATH)

.PHONY: setup demo lint test test-fast mlflow-ui clean-demo

# A virtual environment with the exact versions of requirements.lock and the prdit CLI.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# The whole DAG on the built-in synthetic DICOM dataset (CPU, minutes). Re-running does no work.
demo: setup
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) all

# Lint and format checks of the Python code (ruff, pyproject.toml) and the workflow (snakefmt, snakemake --lint).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint --cores 1

# The full test suite, end-to-end runs of snakemake, dvc and a local SLURM cluster included, after the lint.
# Two workers, one test file each at a time: the end-to-end files mostly wait on subprocesses.
test: lint
	$(BIN)/pytest -q -n 2 --dist loadfile

# Unit tests only (seconds to minutes).
test-fast: lint
	$(BIN)/pytest -q -n 2 --dist loadfile -m "not slow"

# Prints the page to open (the experiment's training runs), then serves the UI until Ctrl-C.
mlflow-ui: setup
	@echo "MLflow UI: open $$($(BIN)/prdit ui-url --port 5000)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000

clean-demo:
	rm -rf data/interim data/processed data/splits models samples metrics reports logs .snakemake
