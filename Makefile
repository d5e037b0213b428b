# The two commands a newcomer needs: `make run` and `make test` (see README.md).
CARGO ?= cargo

.PHONY: all build deps test run bench clean

all: build

build:
	$(CARGO) build --release --locked

# What the interoperability tests need (Postfix, swaks, Dovecot, accounts alice and bob):
# installed when missing, which takes root (README.md).
deps:
	scripts/install-test-deps.sh

# Every test: unit, integration and property tests, then lint and formatting checks.
test: deps
	$(CARGO) build --all-targets --locked
	$(CARGO) test --locked
	$(CARGO) clippy --all-targets --locked -- -D warnings
	$(CARGO) fmt --all -- --check

# Lays out the demo installation in run/, checks it, and runs the dispatcher on it in the
# foreground (Ctrl-C stops it).
run: build
	scripts/demo-layout.sh run target/release >/dev/null
	run/lib/dispatcher --check
	run/lib/dispatcher --foreground

# Benchmarks, printed as tables (see docs/performance.md). Not part of `make test`.
bench: build deps
	$(CARGO) build --release --locked --examples
	$(CARGO) bench --locked --bench mapping
	$(CARGO) bench --locked --bench handoff
	$(CARGO) bench --locked --bench lmtp

clean:
	$(CARGO) clean
	rm -rf run
