# Two commands from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint docs clean

# The extras a stamp installs: its own name, except test, which adds docs (make test
# builds the docs site; the docs extra adds about 10 s to a fresh install).
EXTRAS_test := test,docs

$(VENV)/.stamp-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install --progress-bar on -e '.[$(or $(EXTRAS_$*),$*)]'
	touch $@

demo: $(VENV)/.stamp-examples
	$(PY) examples/quickstart.py
	$(PY) examples/train_lm.py

test: $(VENV)/.stamp-test
	tools/run_tests.sh $(PY)

docs: $(VENV)/.stamp-docs
	$(PY) -m mkdocs build --strict -d site

lint: $(VENV)/.stamp-test
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check fp8mm tests examples tools benchmarks
	$(VENV)/bin/ruff format --check fp8mm tests examples tools benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build site *.egg-info
