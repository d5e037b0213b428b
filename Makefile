# The two commands a newcomer needs: `make run` and `make test` (see README.md).
CARGO ?= cargo

.PHONY: all build deps test stress run bench fuzz clean install uninstall deb check-deb

all: build

# The programs `make build` ships go to target/dist, where `make run`, `make install`, the
# package, `make stress` and `make bench` take them from. The store image, tcp_lmtp_server, is
# linked statically there: without the dynamic loader and with a third fewer page faults a
# worker's start takes about a quarter less CPU, which MAX_LIFE_CONNS recycling pays every 100
# connections (docs/performance.md, fifth stop). It looks up no account, so static glibc's
# caveat (getpwnam loads the NSS modules of the glibc it was built with) does not reach it;
# the dispatcher and tcp_lmtpn_server look accounts up and stay dynamic. The flag is the final
# crate's alone (`cargo rustc`), built in a target directory of its own so that cargo's
# release build, which the tests use, stays as it is. They are stripped, as a package's are
# (profile target/release's, which keep their debug information).
DIST = target/dist
STATIC_TARGET = target/static
# Makes tests and benches lay their installations out with those programs (tests/common).
SHIPPED = MSD_BINDIR=$(CURDIR)/$(DIST)
build:
	$(CARGO) build --release --locked
	$(CARGO) rustc --release --locked --bin tcp_lmtp_server --target-dir $(STATIC_TARGET) \
	    -- -C target-feature=+crt-static
	mkdir -p $(DIST)
	install -s -m 0755 target/release/dispatcher target/release/tcp_lmtpn_server \
	    $(STATIC_TARGET)/release/tcp_lmtp_server $(DIST)/

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

# The heavy load and fault scenarios, each under a few minutes, one at a time on a release
# build; all of them well under 15 minutes. tests/stress_runtime.rs: Postfix relaying under
# SIGTERM, a reload storm under load; tests/two_tier_faults.rs: the two-tier deployment on
# separate hosts (network namespaces) with a store stopped, killed, a worker killed mid-DATA,
# a store's disk full. Not part of `make test`; CI runs it after.
stress: deps build
	$(CARGO) build --release --locked --bins --examples
	$(SHIPPED) $(CARGO) test --release --locked --test stress_runtime --test two_tier_faults \
	    -- --ignored --test-threads=1 --nocapture

# Lays out the demo installation in run/, checks it, and runs the dispatcher on it in the
# foreground (Ctrl-C stops it).
run: build
	scripts/demo-layout.sh run $(DIST) >/dev/null
	run/lib/dispatcher --check
	run/lib/dispatcher --foreground

# Benchmarks, printed as tables (see docs/performance.md). Not part of `make test`.
# Their temporary directories go below BENCH_TMP, which has ext4's top-directory flag where the
# file system has one (`chattr +T`): each run's directories then land in block groups of their
# own, not among the thousands of inodes `make test` just freed in /tmp's group, which ext4
# without a journal skips one by one for a minute or more (docs/performance.md, third stop).
BENCH_TMP ?= $(CURDIR)/target/bench-tmp
BENCH_ENV = TMPDIR=$(BENCH_TMP) $(SHIPPED)
bench: build deps
	$(CARGO) build --release --locked --examples
	mkdir -p $(BENCH_TMP)
	chattr +T $(BENCH_TMP) 2>/dev/null || echo "bench: no top-directory flag on $(BENCH_TMP)"
	$(BENCH_ENV) $(CARGO) bench --locked --bench mapping
	$(BENCH_ENV) $(CARGO) bench --locked --bench handoff
	$(BENCH_ENV) $(CARGO) bench --locked --bench lmtp
	$(BENCH_ENV) $(CARGO) bench --locked --bench refused_flood
	$(BENCH_ENV) $(CARGO) bench --locked --bench idle_memory

# Coverage-guided fuzzing of every reader and parser of untrusted input (docs/fuzzing.md), on
# the nightly toolchain: each target of fuzz/ runs FUZZ_SECONDS from its committed corpus, which
# is then minimized. A crash stops no other target; the reproducers land in fuzz/artifacts/
# (and are kept in the corpus too) and the run fails at the end. Not part of `make test`, which
# replays the committed corpora and reproducers.
FUZZ_SECONDS ?= 20
FUZZ_RSS_MB ?= 2048
FUZZ_TIMEOUT ?= 10
FUZZ = $(CARGO) +nightly fuzz
fuzz:
	$(FUZZ) --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && $(FUZZ) build -s none
	cd fuzz && failed=; for t in $$($(FUZZ) list); do \
	    echo "== fuzz $$t: $(FUZZ_SECONDS) s"; \
	    $(FUZZ) run -s none $$t -- -max_total_time=$(FUZZ_SECONDS) \
	        -rss_limit_mb=$(FUZZ_RSS_MB) -timeout=$(FUZZ_TIMEOUT) -print_final_stats=1 \
	        || failed="$$failed $$t"; \
	    $(FUZZ) cmin -s none $$t -- -rss_limit_mb=$(FUZZ_RSS_MB) -timeout=$(FUZZ_TIMEOUT) \
	        >/dev/null 2>&1 || failed="$$failed $$t(cmin)"; \
	    cp artifacts/$$t/* corpus/$$t/ 2>/dev/null || true; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: crashes in:$$failed (see fuzz/artifacts/)"; exit 1; fi

# In place into an existing installation, with a way back (docs/admin-guide.md, "Install in
# place"): `make install IMTA_BIN=/opt/SUNWmsgsr/lib` replaces the three programs there (each
# replaced file kept once as <name>.orig, its mode and owner carried over), installs the manual
# pages under MANDIR, then runs the installed `dispatcher --check` (with --tailor TAILOR when
# TAILOR is given) and prints what it found. `make uninstall IMTA_BIN=...` puts the .orig files
# back. DESTDIR stages both under another root. The work is scripts/install-in-place.sh.
IMTA_BIN ?=
DESTDIR ?=
MANDIR ?= /usr/share/man
TAILOR ?= $(IMTA_TAILOR)
INSTALL_ENV = IMTA_BIN="$(IMTA_BIN)" DESTDIR="$(DESTDIR)" MANDIR="$(MANDIR)" TAILOR="$(TAILOR)"
install: build
	$(INSTALL_ENV) BINDIR="$(CURDIR)/$(DIST)" scripts/install-in-place.sh install

uninstall:
	$(INSTALL_ENV) scripts/install-in-place.sh uninstall

# The Debian package (docs/packaging.md): target/debian/msdispatcher_<version>_<arch>.deb, made
# by cargo-deb (installed from crates.io when missing) from the release build. `make check-deb`
# then checks it as an administrator would meet it: its contents and modes, lintian, the unit
# (systemd-analyze verify), and an install, a delivery, a removal and a purge in a scratch root
# (an overlay of this system in a private mount namespace, so this system is not changed).
# CI runs both after `make stress`.
CARGO_DEB_VERSION ?= 3.8.0
deb: build
	$(CARGO) deb --version >/dev/null 2>&1 || \
	    $(CARGO) install cargo-deb --locked --version $(CARGO_DEB_VERSION)
	$(CARGO) deb --no-build --locked --strip
	@ls -1 target/debian/*.deb

check-deb: deb deps
	scripts/check-deb.sh "$$(ls -1t target/debian/msdispatcher_*.deb | head -n 1)"

clean:
	$(CARGO) clean
	rm -rf run
