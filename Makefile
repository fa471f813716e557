# mmcourse — two commands:  `make lab` (set up and open the course)  ·  `make test` (set up and run every test)
# Setting up is idempotent and repairs: a venv in .venv, installed when pyproject.toml changes, and checked by
# `make doctor` every time; a broken environment (e.g. a torch/torchvision pair that does not import together)
# is reinstalled by the same command.

PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
JOBS     ?= 2
CPU_ONLY ?=
PORT     ?= 8888
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
INSTALL  := $(BIN)/python scripts/install.py
DOCTOR   := $(BIN)/python -m mmcourse.classroom.doctor

.PHONY: lab test test-grader course weights doctor exercises check bench setup setup-dev clean help

help:  ## list the targets and the variables they take
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'
	@printf '\nvariables (make TARGET NAME=value):\n'
	@printf '  LESSONS=notebooks/04_training_clip.ipynb  make course: only these lessons (default: all, in order)\n'
	@printf '  CPU_ONLY=1        first setup: install the CPU-only torch wheels (Linux; falls back to PyPI if unreachable)\n'
	@printf '  PORT=8890         make lab: the port to try first (default 8888; a busy port moves to the next free one)\n'
	@printf '  JOBS=2            make test: pytest workers     PYTHON=python3.12  the Python that creates .venv\n'

lab: setup  ## set up, then open the course in JupyterLab (http://127.0.0.1:8888, or the next free port; stop: Ctrl-C)
	PORT=$(PORT) scripts/lab.sh notebooks/00_welcome.ipynb

test: setup-dev  ## set up, check the environment, then run the whole test suite (notebooks included)
	$(BIN)/python -m pytest -n $(JOBS)

test-grader: setup-dev  ## the grader's cold-cache tests for every assignment that trains models (07, 09, 11; slow)
	MMCOURSE_COLD_GRADING=all $(BIN)/python -m pytest tests/test_grade_cold_cache.py

course: setup  ## re-execute lessons in place, printing each one's time (outputs committed; HTML in build/course)
	$(BIN)/python -m mmcourse.classroom.course --html build/course $(LESSONS)

weights: setup  ## rebuild the shipped models (mmcourse/recipes/weights): every lesson and solution from scratch (~20 min)
	$(BIN)/python -m mmcourse.classroom.weights

doctor:  ## check Python, torch/torchvision and every package the course needs; one line per problem with its fix
	@$(DOCTOR)

exercises: setup  ## regenerate exercises/ from solutions/
	$(BIN)/python -m mmcourse.classroom.exercises && echo "make exercises: exercises/ generated from solutions/ (each file written is listed above; none listed: all were up to date)"

check: setup  ## fail if exercises/ is stale
	$(BIN)/python -m mmcourse.classroom.exercises --check

bench: setup-dev  ## speed and memory figures quoted in the README
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

# `setup` always runs the doctor: when it finds a problem the stamps go and the install runs again (with
# `doctor --repair`, which reinstalls a torch/torchvision pair that does not work together).
setup:  ## only set up the course (re-run it to repair a broken environment)
	@$(MAKE) --no-print-directory $(VENV)/.runtime
	@$(DOCTOR) || { echo "make: repairing the environment"; rm -f $(VENV)/.runtime $(VENV)/.dev; \
	                $(MAKE) --no-print-directory $(VENV)/.runtime; }
setup-dev:  ## only set up the course and the test tools (re-run it to repair)
	@$(MAKE) --no-print-directory $(VENV)/.dev
	@$(DOCTOR) || { echo "make: repairing the environment"; rm -f $(VENV)/.runtime $(VENV)/.dev; \
	                $(MAKE) --no-print-directory $(VENV)/.dev; }

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# CPU_ONLY=1: torch and torchvision from PyTorch's CPU index first; if that index cannot be reached, the
# default wheels from PyPI are installed by the next line instead (never a half-installed pair).
define install_cpu_torch
	$(if $(CPU_ONLY),$(INSTALL) torch torchvision --index-url $(TORCH_CPU_INDEX) \
	    || echo "make: $(TORCH_CPU_INDEX) cannot be reached; installing the default torch wheels from PyPI")
endef

# Installing: scripts/install.py uses uv when it can (torch's wheels unpacked in parallel: ~30 s where pip takes
# ~90 s on 2 cores), with pip's own constraints and mirrors, and pip otherwise (MMCOURSE_INSTALLER=pip: pip only).
# Byte code: neither compiles the files it installs (torch's alone take over a minute on one core, and most are
# never imported); that is left to Python, which compiles a module the first time it is imported
# and keeps the result. Where the environment says not to keep it (PYTHONDONTWRITEBYTECODE, set on some CI
# machines), every kernel would compile torch again (about 10 s of CPU each): the course's commands keep it.
unexport PYTHONDONTWRITEBYTECODE

# A stamp is written only after the doctor passes.
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(install_cpu_torch)
	$(INSTALL) -e ".[pretrained]"
	$(DOCTOR) --repair
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(install_cpu_torch)
	$(INSTALL) -e ".[dev,pretrained]"
	$(DOCTOR) --repair
	touch $@ $(VENV)/.runtime

clean:  ## remove build outputs (keeps the venv)
	rm -rf build .pytest_cache
