# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo install clean serve

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel on this disk. Never let pip pick a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

DEMO_EXPR := "0.30,0.30" AND "0.70,0.70" AND NOT "0.70,0.30"
# demo.png: the expression, a panel of the asked positions (rings: AND, cross: NOT), the 8 samples.
# Selection doubles the sampling time: make demo DEMO_SELECT="--select lift --candidates 2"
DEMO_SELECT ?=

demo: $(STAMP)
	$(VENV)/bin/compdiff explain '$(DEMO_EXPR)' --guidance-scale 3
	$(VENV)/bin/compdiff sample '$(DEMO_EXPR)' --n 8 --seed 0 --annotate $(DEMO_SELECT) --out demo.png

# the web page on http://127.0.0.1:7860 (more flags: make serve SERVE_ARGS="--port 8000 --model DIR")
serve: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/compdiff serve $(SERVE_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info
