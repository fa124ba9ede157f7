# Everything a fresh machine needs: `make demo` and `make test` create the environment themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
OUT    ?= runs/demo

.PHONY: demo control test test-all lint bench env browser clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/medaug demo --output $(OUT)

# The positive control: the paper's orderings on the phantom (about 45 minutes on 2 CPUs).
control: $(STAMP)
	$(BIN)/medaug demo --control --output runs/phantom_paper

# Debian's Chromium, for the test that opens the MLflow UI in a headless browser (skipped
# without it, except in CI); installed with apt-get, which needs root.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } || \
	  echo "make browser: could not install Debian's chromium (root needed); the browser test will be skipped"

test: $(STAMP) browser
	$(BIN)/ruff check medaug tests benchmarks sweeps
	$(BIN)/python -m pytest -q --timeout 600

test-all: $(STAMP) browser
	$(BIN)/python -m pytest -q --timeout 1800 -m ""

lint: $(STAMP)
	$(BIN)/ruff check medaug tests benchmarks sweeps

BENCHES = pairs load cache pretrain eval sweep

bench: $(STAMP)
	mkdir -p runs/bench
	for b in $(BENCHES); do $(BIN)/python benchmarks/bench_$$b.py --json runs/bench/$$b.json || exit 1; done

clean:
	rm -rf $(VENV) runs
