# KernelSight: `make run` and `make test` do all set-up themselves on a fresh
# Debian 12 machine (as root) and are quick when it is already done.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
export KS_DATA_DIR ?= $(CURDIR)/data

APT_PACKAGES := build-essential cmake pkg-config clang llvm libbpf-dev bpftool \
	libelf-dev zlib1g-dev libbpf-tools python3-venv python3-dev stress-ng fio chromium \
	sysbench linux-perf apache2-utils wrk iperf3 nftables iproute2 sqlite3 xz-utils \
	prometheus prometheus-alertmanager
PY_BUILD_DEPS := "scikit-build-core>=0.10" "pybind11>=2.12"

# Python is installed editable (every .py is live); only native sources, the
# build files and the package layout need a reinstall.
NATIVE_SOURCES := $(shell find native bpf -type f 2>/dev/null) CMakeLists.txt pyproject.toml \
	$(shell find pipeline collectors schema -name __init__.py 2>/dev/null)

.PHONY: setup build run test test-native bench soak scenarios clean apt

setup: apt $(VENV)/.deps-stamp

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps-stamp: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -U pip
	$(PIP) install $(PY_BUILD_DEPS) $$($(PY) -c 'import tomllib;d=tomllib.load(open("pyproject.toml","rb"))["project"];print(" ".join(repr(x) for x in d["dependencies"]+[y for v in d["optional-dependencies"].values() for y in v]))' | tr -d "'")
	touch $@

build: setup $(VENV)/.install-stamp

$(VENV)/.install-stamp: $(NATIVE_SOURCES) $(VENV)/.deps-stamp
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

run: build
	$(VENV)/bin/ks run

test: build test-native
	$(PY) -m pytest -q tests

# Native unit tests under AddressSanitizer + UBSan, the generic tracers' BTF
# decoder among them (so the eBPF objects are built here too).  No native code
# starts a thread, so there is nothing for a TSan build (option KS_TSAN) to check.
test-native: setup
	cmake -S . -B build/asan -DKS_BUILD_TESTS=ON -DKS_SANITIZE=ON -DKS_BUILD_BPF=ON -DKS_BUILD_PYTHON=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build build/asan -j2 >/dev/null
	cd build/asan && ctest --output-on-failure

bench: build
	$(PY) -m bench && $(PY) docs/generate.py

# Ten minutes of the real pipeline with synthetic producers at 50k lines/s and a
# random stage SIGKILLed every 20 s; the figure goes to bench/results.json.
soak: build
	$(PY) -m bench soak && $(PY) docs/generate.py

# Real faults injected with the whole pipeline up; table in bench/scenarios.json and docs/scenarios.md.
scenarios: build
	$(PY) -m kernelsight.scenarios --json bench/scenarios.json && $(PY) docs/generate.py

clean:
	rm -rf build $(VENV) *.egg-info
