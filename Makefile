# molmo-jax: `make demo` runs the main job, `make test` the test suite (both set up .venv first).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-slow golden demo bench lint

$(STAMP): setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)
	$(PY) -m pytest -q -m slow; rc=$$?; if [ $$rc -eq 5 ]; then echo "no slow tests yet"; exit 0; fi; exit $$rc

golden: $(STAMP)
	$(PY) -m pytest -q -m golden

# The main job (about 15 minutes on 2 cores): synthetic data -> stage 1 -> stage 2 -> evaluation with
# a blank-image control -> demo_out/report/index.html. Finished phases are reused; DEMO_ARGS=--fresh redoes them.
demo: $(STAMP)
	$(PY) -m molmo_jax.cli.demo --out=demo_out $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.model_step
	$(PY) -m benchmarks.train_step
	$(PY) -m benchmarks.generate
	$(PY) benchmarks/preprocess.py
	$(PY) benchmarks/data_pipeline.py

lint: $(STAMP)
	$(PY) -m ruff check .
