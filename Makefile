# Installs cohmem: binaries, libcohmem.so, cohmem.h, cohmem.pc, the systemd
# units and an example configuration.
#
#   cargo build --release && sudo make install            # into /usr/local
#   make install PREFIX=/usr DESTDIR=/tmp/stage           # staged, for packaging
#   sudo make uninstall
#
# BUILD_DIR is where cargo put the artifacts (target/release by default).

PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
LIBDIR      ?= $(PREFIX)/lib
INCLUDEDIR  ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR  ?= /etc
BUILD_DIR   ?= target/release
DESTDIR     ?=
VERSION     := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

BINS        ?= cohmemd cohmemctl cohmem-stress cohmem-bench

.PHONY: all build install uninstall

all: build

build:
	cargo build --release --workspace

install:
	@for f in $(BINS) libcohmem.so; do \
	  [ -f "$(BUILD_DIR)/$$f" ] || { echo "$(BUILD_DIR)/$$f is missing: run cargo build --release first" >&2; exit 1; }; \
	done
	install -d "$(DESTDIR)$(BINDIR)" "$(DESTDIR)$(LIBDIR)" "$(DESTDIR)$(INCLUDEDIR)" \
	  "$(DESTDIR)$(PKGCONFIGDIR)" "$(DESTDIR)$(UNITDIR)" "$(DESTDIR)$(SYSCONFDIR)/cohmem"
	for f in $(BINS); do install -m 0755 "$(BUILD_DIR)/$$f" "$(DESTDIR)$(BINDIR)/$$f"; done
	install -m 0755 "$(BUILD_DIR)/libcohmem.so" "$(DESTDIR)$(LIBDIR)/libcohmem.so"
	install -m 0644 capi/include/cohmem.h "$(DESTDIR)$(INCLUDEDIR)/cohmem.h"
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	  -e 's|@VERSION@|$(VERSION)|' capi/cohmem.pc.in > "$(DESTDIR)$(PKGCONFIGDIR)/cohmem.pc"
	sed -e 's|@BINDIR@|$(BINDIR)|' systemd/cohmemd.service > "$(DESTDIR)$(UNITDIR)/cohmemd.service"
	install -m 0644 systemd/cohmemd.socket "$(DESTDIR)$(UNITDIR)/cohmemd.socket"
	@# An existing configuration is kept.
	[ -e "$(DESTDIR)$(SYSCONFDIR)/cohmem/cohmemd.toml" ] || \
	  install -m 0644 systemd/cohmemd.toml "$(DESTDIR)$(SYSCONFDIR)/cohmem/cohmemd.toml"

uninstall:
	for f in $(BINS); do rm -f "$(DESTDIR)$(BINDIR)/$$f"; done
	rm -f "$(DESTDIR)$(LIBDIR)/libcohmem.so" "$(DESTDIR)$(INCLUDEDIR)/cohmem.h" \
	  "$(DESTDIR)$(PKGCONFIGDIR)/cohmem.pc" "$(DESTDIR)$(UNITDIR)/cohmemd.service" \
	  "$(DESTDIR)$(UNITDIR)/cohmemd.socket"
