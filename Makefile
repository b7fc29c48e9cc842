# Quick start: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
# Installed before the project so that pip keeps this (CPU) build instead of resolving a newer one.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test mutate venv data clean

venv: $(VENV)/.installed

# The default data set is Debian's dataset-fashion-mnist; as root it is installed here.
data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update && apt-get install -y dataset-fashion-mnist; \
		else \
			echo "Fashion-MNIST is missing: run  sudo apt-get install -y dataset-fashion-mnist"; exit 1; \
		fi; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# Each run goes to its own results/demo-<timestamp>; results/demo then points at the newest, which the
# examples in README.md and docs/ read.
demo: venv data
	@if [ -e results/demo ] && [ ! -L results/demo ]; then \
		echo "results/demo is not a link: move it away, make demo points results/demo at its run"; exit 1; \
	fi
	run=demo-$$(date +%Y%m%d-%H%M%S) && \
	$(BIN)/autoprune search --budget 50%flops --out results/$$run && \
	ln -sfn $$run results/demo && echo "results/demo -> $$run"

# One worker per core (pytest-xdist), each taking whole modules: the Ray tests, all in test_ray.py, run
# one after another (its teardown, `ray stop --force`, stops every Ray process on the machine).
test: venv data
	$(BIN)/python -m pytest -q -n auto --dist loadscope

# Mutation testing of the modules that decide the product's numbers ([tool.mutmut] in pyproject.toml,
# docs/mutation.md), from scratch, one mutant at a time; then the score per module.
MUTATE_CHILDREN ?= 1
mutate: venv
	rm -rf mutants
	$(BIN)/mutmut run --max-children $(MUTATE_CHILDREN)
	$(BIN)/python tools/mutation_score.py mutants/score.md

clean:
	rm -rf $(VENV) *.egg-info
