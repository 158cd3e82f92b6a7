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
	prometheus prometheus-alertmanager prometheus-node-exporter tmux hping3 nodejs
PY_BUILD_DEPS := "scikit-build-core>=0.10" "pybind11>=2.12"

# Python is installed editable (every .py is live); only native sources, the
# build files and the package layout need a reinstall.
NATIVE_SOURCES := $(shell find native bpf -type f 2>/dev/null) CMakeLists.txt pyproject.toml \
	$(shell find pipeline collectors schema -name __init__.py 2>/dev/null)

.PHONY: setup build run test test-native bench soak scenarios clean apt install uninstall

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

# The service (deploy/systemd/kernelsight.service): a wheel of this checkout installed in its
# own venv PREFIX on Debian's python3 (no path into this checkout or /root), run as the system
# user kernelsight with five capabilities; data in /var/lib/kernelsight, FIFO in
# /run/kernelsight, config /etc/kernelsight/config.toml (kept if present).  Uninstall keeps the
# config, the data and the user.
PREFIX ?= /opt/kernelsight
SYSTEM_PYTHON ?= /usr/bin/python3
UNIT_DIR ?= /etc/systemd/system

install: build
	rm -rf build/wheel && $(PY) -m pip --disable-pip-version-check -q wheel --no-build-isolation --no-deps -w build/wheel .
	test -x $(PREFIX)/bin/python || $(SYSTEM_PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/python -m pip --disable-pip-version-check -q install --force-reinstall --no-deps build/wheel/kernelsight-*.whl
	$(PREFIX)/bin/python -m pip --disable-pip-version-check -q install build/wheel/kernelsight-*.whl
	getent passwd kernelsight >/dev/null || useradd --system --user-group --home-dir /var/lib/kernelsight \
		--no-create-home --shell /usr/sbin/nologin kernelsight
	install -d -m 0755 /etc/kernelsight
	test -e /etc/kernelsight/config.toml || install -m 0644 deploy/config.toml.example /etc/kernelsight/config.toml
	sed 's|/opt/kernelsight|$(PREFIX)|g' deploy/systemd/kernelsight.service > $(UNIT_DIR)/kernelsight.service
	ln -sf $(PREFIX)/bin/ks /usr/local/bin/ks
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; echo "installed: systemctl enable --now kernelsight"; \
	else echo "installed; systemd is not running here (PID 1 is $$(ps -p 1 -o comm=)): the unit cannot be started"; fi

uninstall:
	-@[ -d /run/systemd/system ] && systemctl disable --now kernelsight 2>/dev/null || true
	rm -f $(UNIT_DIR)/kernelsight.service
	[ "$$(readlink /usr/local/bin/ks)" != "$(PREFIX)/bin/ks" ] || rm -f /usr/local/bin/ks
	rm -rf $(PREFIX)
	-@[ -d /run/systemd/system ] && systemctl daemon-reload || true
	@echo "kept: /etc/kernelsight/config.toml, the data in /var/lib/kernelsight and the user kernelsight"
