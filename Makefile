# One entry point. `make demo` and `make test` set everything up on a machine with only Python.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# torch/torchvision pinned here only: this pair is served from the local disk (fast); other pins download GBs.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test test-slow test-gpu bench weights weights-gpu clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/latentdiff generate --from-file configs/demo-prompts.txt --num-images 2 -o outputs/demo/image.png

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -s -m gpu tests/test_gpu.py

bench: $(STAMP)
	$(BIN)/python benchmarks/sampler_overhead.py
	$(BIN)/python benchmarks/generate_speed.py
	$(BIN)/python benchmarks/train_speed.py

weights: $(STAMP)
	$(BIN)/latentdiff shapes build --configs configs/shapes --workdir outputs/shapes-build --out weights/shapes

# version 6's recipe: ~13 min on one H200 (benchmarks/README.md); days on 2 CPU cores
weights-gpu: $(STAMP)
	$(BIN)/latentdiff shapes build --configs configs/shapes-gpu --workdir outputs/shapes-build-gpu --out weights/shapes

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
