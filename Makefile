# Set-up and everyday commands. `make test` and `make demo` each build .venv
# with the pinned, tested set (constraints.txt) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: install test demo demo-image demo-library bench clean

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable ".[test,plots,text]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The speaker recipe end to end on the embedded audio-visual corpus: generate
# it, train the small face teacher, distil into a speech student, then evaluate
# (clean and noisy trials, face-voice matching; results.json and results.md).
demo: $(STAMP)
	$(BIN)/python recipes/VoxCeleb/train.py recipes/VoxCeleb/hparams/synthetic_xmkd.yaml $(DEMO_ARGS)
	$(BIN)/python recipes/VoxCeleb/evaluate.py recipes/VoxCeleb/hparams/synthetic_xmkd.yaml $(DEMO_ARGS)

# The image recipe on its embedded set: a text teacher (the offline sentence
# encoder) teaches an image classifier.
demo-image: $(STAMP)
	$(BIN)/python recipes/CIFAR100/train.py recipes/CIFAR100/hparams/synthetic_image_xmkd.yaml $(DEMO_ARGS)

# The library alone: distillation objects from a yaml on random tensors.
demo-library: $(STAMP)
	$(BIN)/python recipes/Demo/demo.py recipes/Demo/hparams/demo.yaml

bench: $(STAMP)
	$(BIN)/python benchmarks/metrics.py
	$(BIN)/python benchmarks/loss_overhead.py
	$(BIN)/python benchmarks/step_overhead.py
	$(BIN)/python benchmarks/scoring.py
	$(BIN)/python benchmarks/image_step_overhead.py

clean:
	rm -rf $(VENV) results .pytest_cache
