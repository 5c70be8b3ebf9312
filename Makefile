# Two commands set everything up on a fresh Debian 12 / Raspberry Pi OS machine:
#   make demo   - install, then run cloud + edge daemon on this machine, printing live events
#   make test   - install, then lint (ruff), type-check (mypy) and run the whole test suite
# Re-running is fast: each step is skipped while its inputs are unchanged.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
EDGE_VENV := .venv-edge
TFLITE_VENV := .venv-tflite
PIP_INSTALL = pip install --quiet --constraint constraints.txt
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# System packages: compilers and headers for PyAudio (portaudio) and systemd-python, libsndfile,
# ALSA tools for the microphone path, Mosquitto, which the MQTT tests start on free ports, and
# Chromium with its driver, which the labelling console's browser test drives headless,
# systemd (systemd-analyze verifies the units in deploy/systemd) and ShellCheck (lints
# deploy/pi/install.sh).
APT_PACKAGES := python3-venv python3-dev build-essential pkg-config portaudio19-dev \
	libsystemd-dev libsndfile1 alsa-utils mosquitto chromium chromium-driver systemd shellcheck
DEMO_OUT := out/demo

.PHONY: demo demo-mic test lint typecheck pytest system-packages clean

# The whole loop on this machine: the cloud (SQLite, embedded MQTT broker), an edge daemon
# replaying shipped recordings, events printed as they arrive; Ctrl-C stops it all.
# `make demo-mic` listens to the microphone instead; DEMO_ARGS passes more (see --help).
demo: system-packages $(VENV)/.installed
	$(VENV)/bin/python scripts/demo.py --out $(DEMO_OUT)/run $(DEMO_ARGS)

demo-mic: system-packages $(VENV)/.installed
	$(VENV)/bin/python scripts/demo.py --out $(DEMO_OUT)/run --mic $(DEMO_ARGS)

test: system-packages $(VENV)/.installed $(EDGE_VENV)/.installed $(TFLITE_VENV)/.installed \
	lint typecheck pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

pytest: $(VENV)/.installed $(EDGE_VENV)/.installed $(TFLITE_VENV)/.installed
	SOUNDWARDEN_EDGE_VENV=$(EDGE_VENV) SOUNDWARDEN_TFLITE_PYTHON=$(TFLITE_VENV)/bin/python \
		$(VENV)/bin/python -m pytest

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' \
		|| echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		$(SUDO) apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ required"'

# The development environment: every extra (torch is the CPU build pinned in constraints.txt).
$(VENV)/.installed: pyproject.toml constraints.txt
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/$(PIP_INSTALL) --editable '.[edge,mic,tflite,cloud,train,dev]'
	touch $@

# What a Raspberry Pi gets: the edge extra alone. Tests check it holds no torch or librosa.
$(EDGE_VENV)/.installed: pyproject.toml constraints.txt
	[ -x $(EDGE_VENV)/bin/python ] || $(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/$(PIP_INSTALL) --editable '.[edge]'
	touch $@

# The TFLite converter (litert-torch) lives apart: its dependencies clash with the main
# environment's (see constraints-tflite.txt). Training calls it as a subprocess.
$(TFLITE_VENV)/.installed: constraints-tflite.txt
	[ -x $(TFLITE_VENV)/bin/python ] || $(PYTHON) -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/pip install --quiet --constraint constraints-tflite.txt \
		torch==2.13.0 litert-torch==0.10.0
	touch $@

clean:
	rm -rf $(VENV) $(EDGE_VENV) $(TFLITE_VENV) out .mypy_cache .ruff_cache .pytest_cache
