# The README's two commands: `make demo` (set up, run the main job) and `make test` (set up, run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision pinned to the releases this project is tested with (ranges in pyproject.toml)
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test smoke clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(PY) run_all.py

smoke: setup
	$(PY) run_all.py --profile smoke

# Quantus is a test-only peer (tests/test_ground_truth.py); where it cannot install, that test skips
$(VENV)/.crosscheck: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[crosscheck]' || echo "Quantus could not be installed: its cross-check test will skip"
	touch $@

test: setup $(VENV)/.crosscheck
	$(PY) -m pytest -q

clean:
	rm -rf results/* figures/*
