# The two commands a fresh clone needs: `make demo` and `make test`. Each does its own setup.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Used only when the pinned CPU wheel is not found on the machine's own wheel store.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP  := $(VENV)/.r2m-installed

.PHONY: setup demo test test-fast bench-smoke clean

setup: $(STAMP)

# torch first, CPU build, so that resolving the other requirements never pulls CUDA wheels.
# The trl extra is pure Python over r2m's own dependencies (it pins no torch), so CI runs the TRL tests; the openai
# extra (the API judges' client) lets CI run the judge tests against their local fake server.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION) \
	  || $(PY) -m pip install -q torch==$(TORCH_VERSION) --index-url $(TORCH_CPU_INDEX)
	$(PY) -m pip install -q -e ".[test,trl,bench,openai]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/r2m demo -c configs/demo.yaml

test: $(STAMP)
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest tests

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest tests -m "not slow"

bench-smoke: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/r2m bench --preset smoke

clean:
	rm -rf $(VENV) runs .pytest_cache
