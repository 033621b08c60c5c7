# Two commands do all set-up: `make demo` (whole pipeline on the demo data) and `make test`.
# Both create .venv and install requirements.txt on first use (torch comes as the pinned pair).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: demo test bench clean-artifacts

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) run_pipeline.py

test: $(VENV)/.installed
	bash .ci/chromium.sh
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) bench/bench_pipeline.py

clean-artifacts:
	rm -rf results figs embeddings cache checkpoints/*.pth checkpoints/previous data/demo
