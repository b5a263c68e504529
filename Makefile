# BEAT: `make demo` and `make test` set everything up themselves (system packages, venv, build).
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
DEPS   := $(VENV)/.stamp-deps
NATIVE := $(VENV)/.stamp-native
SOURCES := $(wildcard fastpath/*.pyx fastpath/*.pxi fastpath/includes/*.pxd fastpath/include/*.h fastpath/src/*.c) setup.py

.PHONY: all setup build test demo demo-offline bench fuzz contracts proto clean

all: build

$(VPY):
	./scripts/bootstrap-system
	$(PYTHON) -m venv $(VENV)

$(DEPS): requirements.txt requirements-lab.txt requirements-ethereum.txt requirements-dev.txt | $(VPY)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	touch $@

# the system packages again when the list in scripts/bootstrap-system grew (a venv made before)
SYSTEM := $(VENV)/.stamp-system
$(SYSTEM): scripts/bootstrap-system | $(VPY)
	./scripts/bootstrap-system
	touch $@

$(NATIVE): $(DEPS) $(SOURCES)
	$(VPY) setup.py -q build_ext --inplace
	$(VPY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

# npm packages of the contract (solc, ganache), pinned by package-lock.json
CONTRACTS := ledger_client/contracts
NPM_DEPS  := $(CONTRACTS)/node_modules/.stamp-npm

$(NPM_DEPS): $(CONTRACTS)/package.json $(CONTRACTS)/package-lock.json | $(VPY)
	cd $(CONTRACTS) && npm ci --no-audit --no-fund
	touch $@

# gns3-server (and gns3-gui's appliance check) in a venv of their own: they pin their own
# dependencies; the GNS3 tests validate against them and run a real server on loopback
GNS3_VENV := .venv-gns3/.stamp-gns3
$(GNS3_VENV): scripts/gns3-venv
	./scripts/gns3-venv
	touch $@

setup build: $(NATIVE) $(NPM_DEPS) $(SYSTEM)

# Regenerate the committed gRPC stubs (beat_rpc/) from proto/beat/v1/interrogation.proto
proto: $(DEPS)
	$(VPY) scripts/gen-proto

# Recompile the contract into the committed ledger_client/contracts/Beat.json
contracts: $(NPM_DEPS) $(DEPS)
	$(VPY) $(CONTRACTS)/compile.py

# Two pytest-xdist workers (TEST_WORKERS=0: one process), handed a module at a time; the labs and
# the proof-of-authority networks one after the other on one of them (tests/conftest.py)
TEST_WORKERS ?= 2
test: $(NATIVE) $(NPM_DEPS) $(GNS3_VENV) $(SYSTEM)
	$(VPY) -m pytest -q -ra --durations=40 -n $(TEST_WORKERS) --dist loadgroup \
		--no-loadscope-reorder tests

# The lab (beat-lab) needs root (network namespaces); elsewhere, say so and replay router r2's
# bundled capture.
demo: $(NATIVE)
	@if [ "$$(id -u)" -eq 0 ]; then \
		$(VPY) -m beat_lab demo --down; \
	else \
		echo "make demo: the namespace lab needs root; showing the offline demo instead"; \
		$(VPY) -m beat_lab demo --offline; \
	fi

# Router r2's bundled capture through the whole pipeline (no root needed).
demo-offline: $(NATIVE)
	$(VPY) -m beat_lab demo --offline

bench: $(NATIVE) $(NPM_DEPS)
	$(VPY) -m benchmarks.run
	@./scripts/bootstrap-bench || echo "make bench: the replay benchmark runs without the missing tools"
	$(VPY) -m benchmarks.replay
	@if [ "$$(id -u)" -eq 0 ]; then $(VPY) -m benchmarks.capture; \
	else echo "make bench: the capture benchmark needs root (namespaces), skipped"; fi
	$(VPY) -m benchmarks.anchoring
	$(VPY) -m benchmarks.interrogation
	@if [ "$$(id -u)" -eq 0 ]; then $(VPY) -m benchmarks.dispute; \
	else echo "make bench: the dispute benchmark needs root (namespaces), skipped"; fi
	$(VPY) -m benchmarks.service

# Long fuzz runs of the parser and of the capture reader (the test suite runs short ones).
fuzz: $(NATIVE)
	mkdir -p fuzz/corpus
	$(VPY) fuzz/fuzz_parser.py -max_total_time=3600 -max_len=4096 -timeout=10 -rss_limit_mb=4096 \
		-artifact_prefix=fuzz/ fuzz/corpus
	mkdir -p fuzz/corpus-capfile
	$(VPY) fuzz/fuzz_capfile.py -max_total_time=1800 -max_len=8192 -timeout=10 -rss_limit_mb=4096 \
		-artifact_prefix=fuzz/ fuzz/corpus-capfile

clean:
	rm -rf build *.egg-info fastpath/_native.c fastpath/*.so $(NATIVE)
