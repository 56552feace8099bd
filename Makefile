# Parley: the everyday commands. `make run` starts the relay on the embedded PostgreSQL;
# `make test` installs what is missing and runs the whole suite.
SWIFT ?= swift
# The suite is XCTest; without this flag swift-testing would also print an empty run.
TEST_FLAGS ?= --disable-swift-testing
TEST_DATA_DIR ?= /tmp/parley-test-$(shell id -u)
PG_BIN ?= $(shell ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
# Seconds `make test` (and `make fuzz`) spend fuzzing the frame decoder; 0 skips it.
FUZZ_SECONDS ?= 60

.PHONY: setup build release test run migrate test-db-stop clean bench

setup:
	scripts/setup

build: setup
	$(SWIFT) build

release: setup
	$(SWIFT) build -c release

# Swift unit and database tests, then the end-to-end suite: an independent Python client
# against the real parley-server over real sockets; then FUZZ_SECONDS of libFuzzer on the
# frame decoder (docs/fuzzing.md).
test: setup
	$(SWIFT) build --build-tests
	$(SWIFT) test $(TEST_FLAGS)
	PARLEY_SERVER_BIN=$$($(SWIFT) build --show-bin-path)/parley-server python3 -m pytest -q Tests/EndToEnd
	scripts/fuzz $(FUZZ_SECONDS)

# libFuzzer (with AddressSanitizer) on the relay's frame decoder: `make fuzz FUZZ_SECONDS=600`.
.PHONY: fuzz
fuzz:
	scripts/fuzz $(FUZZ_SECONDS)

# Two bots (alice and bob) talking through a relay on the embedded PostgreSQL: an
# interleaved transcript of the protocol at work; everything is stopped at the end.
.PHONY: demo
demo: setup
	scripts/demo

# The standard benchmark set with its peers (nginx + nchan, pgbench) and the cross-node
# scenarios (two relay nodes) in one run, 8-10 minutes: medians into docs/benchmarks.md, raw
# results into .bench/ (BENCH_RUNS, BENCH_SECONDS; BENCH_ONLY=xnode for the cross-node part).
bench: setup
	scripts/bench

migrate: setup
	$(SWIFT) run parley-server migrate

run: setup
	$(SWIFT) run parley-server serve

# The test suite leaves its PostgreSQL cluster running between runs so later runs start fast.
test-db-stop:
	@if [ -f "$(TEST_DATA_DIR)/postgres/postmaster.pid" ]; then \
		if [ "$$(id -u)" -eq 0 ]; then runuser -u postgres -- env -C / $(PG_BIN)/pg_ctl stop -D "$(TEST_DATA_DIR)/postgres" -m fast; \
		else $(PG_BIN)/pg_ctl stop -D "$(TEST_DATA_DIR)/postgres" -m fast; fi; \
	fi

clean:
	rm -rf .build
