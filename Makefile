# Two commands set everything up on a fresh Debian 12 / Raspberry Pi OS machine:
#   make demo   - install, then run the front end over a shipped recording
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
# Chromium with its driver, which the labelling console's browser test drives headless.
APT_PACKAGES := python3-venv python3-dev build-essential pkg-config portaudio19-dev \
	libsystemd-dev libsndfile1 alsa-utils mosquitto chromium chromium-driver
DEMO_OUT := out/demo

.PHONY: demo test lint typecheck pytest system-packages clean

demo: system-packages $(VENV)/.installed $(EDGE_VENV)/.installed
	@mkdir -p $(DEMO_OUT)
	$(VENV)/bin/soundwarden-models dataset tests/fixtures/audio
	$(VENV)/bin/soundwarden-models features tests/fixtures/audio/cry/donateacry_ios_045c5483.wav \
		--png $(DEMO_OUT)/spectrogram.png
	$(VENV)/bin/soundwarden-models evaluate --bundle models/pretrained/cry-detector \
		--data tests/fixtures/audio --split all
	@echo "Events the edge would publish for the shipped cry and spoken digit (JSON lines):"
	$(EDGE_VENV)/bin/soundwarden-edge detect --bundle models/pretrained/cry-detector \
		--device demo tests/fixtures/audio/cry/donateacry_ios_045c5483.wav \
		tests/fixtures/audio/other/fsdd_3_theo_10.wav
	@echo "Open $(DEMO_OUT)/spectrogram.png to see what the model hears."

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
