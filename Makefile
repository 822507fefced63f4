# Installs cohmem: binaries, libcohmem (shared and static), cohmem.h,
# cohmem.pc, the systemd units and an example configuration; and builds the
# Debian package.
#
#   cargo build --release && sudo make install            # into /usr/local
#   make install PREFIX=/usr DESTDIR=/tmp/stage           # staged, for packaging
#   make deb                                              # target/debian/cohmem_<version>_<arch>.deb
#   sudo make uninstall
#
# BUILD_DIR is where cargo put the artifacts (target/release by default, or
# $CARGO_TARGET_DIR/release). Installed binaries and libraries are stripped
# (the release profile keeps line tables for backtraces in the build tree).
# libcohmem.so is installed as libcohmem.so.<version> with the SONAME link
# libcohmem.so.<major> and the development link libcohmem.so; libcohmem.a is
# installed when it was built (make staticlib; make deb builds it).

PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
LIBDIR      ?= $(PREFIX)/lib
INCLUDEDIR  ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR  ?= /etc
TARGET_DIR  ?= $(or $(CARGO_TARGET_DIR),target)
BUILD_DIR   ?= $(TARGET_DIR)/release
DESTDIR     ?=
STRIP       ?= strip
VERSION     := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
SOMAJOR     := $(firstword $(subst ., ,$(VERSION)))
# What a program linked statically against libcohmem.a needs besides it
# (rustc --print native-static-libs for the linux-gnu targets; the package
# test links the C example with pkg-config --static to check it).
LIBS_PRIVATE ?= -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
# Where make deb stages the package and puts the .deb.
DEB_DIR     ?= $(TARGET_DIR)/debian

BINS        ?= cohmemd cohmemctl cohmem-stress cohmem-bench

.PHONY: all build staticlib install uninstall deb

all: build

build:
	cargo build --release --workspace

# libcohmem.a, built only here (and by make deb): as a crate-type of
# cohmem-capi it would be archived on every build and test run of the crate.
staticlib:
	cargo rustc --release -p cohmem-capi --lib --crate-type staticlib

install:
	@for f in $(BINS) libcohmem.so; do \
	  [ -f "$(BUILD_DIR)/$$f" ] || { echo "$(BUILD_DIR)/$$f is missing: run cargo build --release first" >&2; exit 1; }; \
	done
	install -d "$(DESTDIR)$(BINDIR)" "$(DESTDIR)$(LIBDIR)" "$(DESTDIR)$(INCLUDEDIR)" \
	  "$(DESTDIR)$(PKGCONFIGDIR)" "$(DESTDIR)$(UNITDIR)" "$(DESTDIR)$(SYSCONFDIR)/cohmem"
	for f in $(BINS); do \
	  install -m 0755 "$(BUILD_DIR)/$$f" "$(DESTDIR)$(BINDIR)/$$f" && $(STRIP) "$(DESTDIR)$(BINDIR)/$$f" || exit 1; \
	done
	install -m 0644 "$(BUILD_DIR)/libcohmem.so" "$(DESTDIR)$(LIBDIR)/libcohmem.so.$(VERSION)"
	$(STRIP) --strip-unneeded "$(DESTDIR)$(LIBDIR)/libcohmem.so.$(VERSION)"
	ln -sf "libcohmem.so.$(VERSION)" "$(DESTDIR)$(LIBDIR)/libcohmem.so.$(SOMAJOR)"
	ln -sf "libcohmem.so.$(SOMAJOR)" "$(DESTDIR)$(LIBDIR)/libcohmem.so"
	if [ -f "$(BUILD_DIR)/libcohmem.a" ]; then \
	  install -m 0644 "$(BUILD_DIR)/libcohmem.a" "$(DESTDIR)$(LIBDIR)/libcohmem.a" && \
	  $(STRIP) --strip-debug "$(DESTDIR)$(LIBDIR)/libcohmem.a"; \
	fi
	install -m 0644 capi/include/cohmem.h "$(DESTDIR)$(INCLUDEDIR)/cohmem.h"
	@# Relocatable: prefix is found from the .pc file's own place (pkg-config
	@# --define-prefix, or a tree copied elsewhere) when the directories lie
	@# under PREFIX; otherwise they are written as given.
	under() { case "$$2/" in "$$1"/*) echo "$$3/$$(realpath -m --relative-to="$$1" "$$2")" ;; *) echo "$$2" ;; esac; }; \
	case "$(PKGCONFIGDIR)/" in \
	  "$(PREFIX)"/*) pc_prefix='$${pcfiledir}/'"$$(realpath -m --relative-to="$(PKGCONFIGDIR)" "$(PREFIX)")" ;; \
	  *) pc_prefix="$(PREFIX)" ;; \
	esac; \
	sed -e "s|@PREFIX@|$$pc_prefix|" -e "s|@LIBDIR@|$$(under "$(PREFIX)" "$(LIBDIR)" '$${prefix}')|" \
	  -e "s|@INCLUDEDIR@|$$(under "$(PREFIX)" "$(INCLUDEDIR)" '$${prefix}')|" \
	  -e 's|@VERSION@|$(VERSION)|' -e 's|@LIBS_PRIVATE@|$(LIBS_PRIVATE)|' \
	  capi/cohmem.pc.in > "$(DESTDIR)$(PKGCONFIGDIR)/cohmem.pc"
	sed -e 's|@BINDIR@|$(BINDIR)|' systemd/cohmemd.service > "$(DESTDIR)$(UNITDIR)/cohmemd.service"
	install -m 0644 systemd/cohmemd.socket "$(DESTDIR)$(UNITDIR)/cohmemd.socket"
	@# An existing configuration is kept.
	[ -e "$(DESTDIR)$(SYSCONFDIR)/cohmem/cohmemd.toml" ] || \
	  install -m 0644 systemd/cohmemd.toml "$(DESTDIR)$(SYSCONFDIR)/cohmem/cohmemd.toml"

uninstall:
	for f in $(BINS); do rm -f "$(DESTDIR)$(BINDIR)/$$f"; done
	rm -f "$(DESTDIR)$(LIBDIR)/libcohmem.so" "$(DESTDIR)$(LIBDIR)/libcohmem.so.$(SOMAJOR)" \
	  "$(DESTDIR)$(LIBDIR)/libcohmem.so.$(VERSION)" "$(DESTDIR)$(LIBDIR)/libcohmem.a" \
	  "$(DESTDIR)$(INCLUDEDIR)/cohmem.h" \
	  "$(DESTDIR)$(PKGCONFIGDIR)/cohmem.pc" "$(DESTDIR)$(UNITDIR)/cohmemd.service" \
	  "$(DESTDIR)$(UNITDIR)/cohmemd.socket"

# The Debian package, in one command: builds (release, and libcohmem.a),
# stages `make install PREFIX=/usr` and packs it with dpkg-deb
# (packaging/deb/build writes DEBIAN/: control with the Depends of
# dpkg-shlibdeps, conffiles, shlibs, triggers, maintainer scripts).
deb: build staticlib
	rm -rf "$(DEB_DIR)/root"
	$(MAKE) --no-print-directory install PREFIX=/usr SYSCONFDIR=/etc DESTDIR="$(abspath $(DEB_DIR))/root" \
	  BUILD_DIR="$(BUILD_DIR)" BINS="$(BINS)"
	packaging/deb/build "$(DEB_DIR)/root" "$(VERSION)" "$(SOMAJOR)" "$(DEB_DIR)"
