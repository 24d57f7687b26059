# bridgebench: `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY ?= $(VENV)/bin/python
NAME ?= blap_stage2
RUNS ?= runs
TINY_CONFIG := $(if $(TINY),--config experiments/tiny.yaml,)
RUN_DIR := $(RUNS)/$(NAME)$(if $(TINY),-tiny,)
CONFIGS := --config experiments/$(NAME).yaml $(TINY_CONFIG)

.PHONY: help install test test-full exp demo clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## Create .venv (if missing) and install the pinned set

test: install ## Run the default test suite (no slow/network/gpu tests)
	$(PY) -m pytest -q

test-full: install ## Run every test, slow/network/gpu included (needs hub access and a GPU for some)
	$(PY) -m pytest -q -m "" 

exp: install ## Fit then test a preset: make exp NAME=blap_stage2 [TINY=1] [ARGS="--trainer.devices=2"]
	$(PY) -m bridgebench fit $(CONFIGS) --trainer.default_root_dir=$(RUN_DIR) $(ARGS)
	$(PY) -m bridgebench test $(CONFIGS) --trainer.default_root_dir=$(RUN_DIR) --ckpt_path=$(RUN_DIR)/checkpoints/last.ckpt $(ARGS)

demo: install ## The main job: a tiny BLAP-style run on the built-in tone set (CPU, under a minute)
	$(MAKE) --no-print-directory exp NAME=blap_stage2 TINY=1

clean: ## Remove run folders (keeps .venv and the cache)
	rm -rf $(RUNS)
