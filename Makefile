# The README's commands. Every target that runs code runs setup first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup setup-dev demo test test-unit lint clean

# setup: what a relay needs (make demo); setup-dev: what the tests, the
# package build and the VMs need on top (make test).
setup:
	@bash scripts/setup.sh

setup-dev:
	@bash scripts/setup.sh --dev

demo: setup
	$(VENV)/bin/mcr-xdp demo

test: setup-dev
	$(PY) -m pytest $(PYTEST_ARGS)

# No root: with the venv installed and newer than pyproject.toml there is
# nothing to set up, so test-unit skips setup (apt-get, bpffs: root). A
# missing or outdated venv still goes through setup, which says it needs root.
test-unit: $(VENV)/.installed-dev
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

$(VENV)/.installed-dev: pyproject.toml
	@bash scripts/setup.sh --dev

# ruff (settings in pyproject.toml) and shellcheck over every shell script;
# tests/packaging/test_lint.py runs this, so `make test` (and CI) does too.
SHELL_SCRIPTS := $(wildcard scripts/*.sh vagrant/*.sh debian/*.postinst debian/*.prerm debian/*.postrm) \
                 packaging/mcr-xdp.bash-completion .ci/run
lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	shellcheck --external-sources $(SHELL_SCRIPTS)

clean:
	rm -rf $(VENV) build bpf/build mcr_xdp/fallback/build *.egg-info .pytest_cache

# The Debian package, built with Debian's tooling from the tracked files:
# build/mcr-xdp_VERSION_ARCH.deb (docs/install.md). No venv needed.
.PHONY: deb
deb:
	@bash scripts/deb.sh

# The bpf and e2e suites on Debian 12's 6.1 kernel in a QEMU guest under
# software emulation (slow: about a minute per e2e test; docs/vm.md).
.PHONY: vm-test vm-clean
vm-test: setup-dev
	@bash scripts/vm-test.sh

vm-clean:
	rm -rf .cache/vm

# Benchmarks (docs/benchmarks.md). What only they need (socat, smcroute,
# bpftool, perf, matplotlib) is installed here, not by setup. BENCH_ARGS
# passes options, e.g. BENCH_ARGS="--relays ceiling,mcr-xdp-native".
BENCH_ARGS ?=
.PHONY: bench bench-quick bench-deps
bench-deps: setup-dev
	@bash bench/deps.sh "$(VENV)"

bench: bench-deps
	$(PY) -m bench --plan full $(BENCH_ARGS)

bench-quick: bench-deps
	$(PY) -m bench --plan quick $(BENCH_ARGS)
