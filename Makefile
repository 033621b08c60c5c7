# Two commands do all set-up: `make demo` (whole pipeline on the demo data) and `make test`.
# Both create .venv and install requirements.txt into it on first use, under the exact versions of constraints.txt
# (the set the suite passed with); .venv is brought up to date whenever either file changes.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: demo test test-fast lint bench bench-quick constraints clean-artifacts

$(VENV)/.installed: requirements.txt constraints.txt
	@echo "make: installing the lab's packages into $(VENV) (torch, torchvision, umap-learn, bokeh, ... from"
	@echo "      requirements.txt at the versions of constraints.txt): about 2-3 minutes the first time"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --progress-bar off -r requirements.txt -c constraints.txt \
		| grep -E --line-buffered '^(Collecting|Installing|Successfully|ERROR)' || true
	$(PY) -c "import torch, torchvision, umap, bokeh, sklearn, pandas, cleanlab, quapy, xdist, ruff" \
		|| { echo "make: the install failed (see above)"; exit 1; }
	touch $@

demo: $(VENV)/.installed
	$(PY) run_pipeline.py

# Both run the tests on every core (pytest-xdist, one worker per core; an idle worker takes tests queued for a busy
# one), each worker with one torch thread: most tests are small and single-threaded anyway, and two threads per
# worker would fight over the cores.
PYTEST = OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist worksteal

# The linter and the formatter (rules and reasons in ruff.toml); both test targets run them first.
# `.venv/bin/ruff format .` and `.venv/bin/ruff check --fix .` mend most of what they report.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The full suite (what .ci/run calls): every skip says why, and the 15 slowest tests are listed.
test: $(VENV)/.installed lint
	bash .ci/chromium.sh
	$(PYTEST) -rs --durations=15 tests

# The edit-and-test loop: no subprocess, torchrun, Chromium or ../shared (tests marked slow are left out).
test-fast: $(VENV)/.installed lint
	$(PYTEST) -m "not slow" tests

# The benchmark (docs/performance.md), at real sizes: `make bench` runs every measurement (about 25 minutes on 2
# cores), `make bench-quick` the headline rows (pipeline, trunk pass, head epoch, head under load).
# Both write results/benchmark.json row by row. Not to be confused with `bench/bench_pipeline.py --quick`: tiny
# sizes, a smoke test of every measurement (the tests run it), whose figures mean nothing.
bench: $(VENV)/.installed
	$(PY) bench/bench_pipeline.py

bench-quick: $(VENV)/.installed
	$(PY) bench/bench_pipeline.py --headline

# Re-resolve requirements.txt in a fresh environment and write the exact versions to constraints.txt; then run
# `make test` and commit both files. Do it whenever a package is added to requirements.txt.
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/python -m pip install --disable-pip-version-check --progress-bar off -q -r requirements.txt
	{ echo "# The exact versions the test suite passed with (python 3.11, x86_64, pip); make installs requirements.txt"; \
	  echo "# under these constraints. Refresh: \`make constraints\`, then \`make test\`, then commit both files (README)."; \
	  .venv-constraints/bin/python -m pip freeze --disable-pip-version-check 2>/dev/null | grep -v '^WARNING'; \
	} > constraints.txt
	rm -rf .venv-constraints
	@echo "make: constraints.txt rewritten; now run make test and commit requirements.txt and constraints.txt"

clean-artifacts:
	rm -rf results figs embeddings cache checkpoints/*.pth checkpoints/previous data/demo
