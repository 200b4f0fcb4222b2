# weir — build, run, test, install, package, bench.
#   make            build build/weir (SAN=1: ASan+UBSan build in build-san/)
#   make run        install what is missing, build, start the echo example
#   make test       install what is missing, build, run every spec
#   make install    install weir (PREFIX=/usr/local, DESTDIR for a staging root; see below)
#   make deb        build the Debian package into build/deb/ (SAN=1: build-san/deb/)
#   make bench      weir against direct, nginx and HAProxy (see bench/README.md)
#   make soak       10,000 connections, reloads, a worker killed (SOAK_TIME s, 600 default; bench/README.md)
#   make fuzz       libFuzzer runs of the parser harnesses, FUZZ_TIME s each (see spec/fuzz/README.md)

SAN      ?= 0
CC       ?= cc
PKGS     := luajit libuv openssl libcurl libsystemd hiredis sqlite3
CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE -fno-strict-aliasing \
            -DWEIR_CONF_DEFAULT='"$(SYSCONFDIR)/weir/weir.conf.lua"'
LDLIBS   += -lm
LDFLAGS  += -rdynamic      # policies reach weir_ffi_* through LuaJIT's FFI

# Where make install puts things. The binary finds its Lua runtime and stock
# policies relative to itself (SBINDIR/../share/weir), so any PREFIX works
# and the tree can be moved as a whole; WEIR_LUA_DIR overrides.
PREFIX     ?= /usr/local
SBINDIR    ?= $(PREFIX)/sbin
DATADIR    ?= $(PREFIX)/share/weir
DOCDIR     ?= $(PREFIX)/share/doc/weir
MANDIR     ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
STATEDIR   ?= /var/lib/weir
DESTDIR    ?=

ifeq ($(SAN),1)
BUILD    := build-san
CFLAGS   += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS  += -fsanitize=address,undefined
else
BUILD    := build
endif

SRCS     := $(wildcard core/*.c)
OBJS     := $(SRCS:core/%.c=$(BUILD)/%.o)
BIN      := $(BUILD)/weir
# core/inspect.c alone, for unit specs in a plain LuaJIT (lua/weir/inspect.lua
# loads it there; never sanitized: LuaJIT itself is not)
INSPECT_SO := $(BUILD)/libweir-inspect.so

.PHONY: all deps run test bench soak fuzz clean install deb

all: $(BIN) $(INSPECT_SO)

$(INSPECT_SO): core/inspect.c core/inspect.h core/weir.h Makefile | $(BUILD)
	$(CC) -O2 -g -std=gnu11 -Wall -Wextra -Werror -fPIC -shared -o $@ core/inspect.c

$(BUILD)/%.o: core/%.c $(wildcard core/*.h) Makefile | $(BUILD)
	$(CC) $(CFLAGS) $$(pkg-config --cflags $(PKGS)) -c -o $@ $<

$(BIN): $(OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $$(pkg-config --libs $(PKGS)) $(LDLIBS)

$(BUILD):
	mkdir -p $@

deps:
	@.ci/deps

run: deps
	@$(MAKE) --no-print-directory all
	@examples/echo/run $(BIN)

test: deps
	@$(MAKE) --no-print-directory all
	@WEIR_BIN=$(CURDIR)/$(BIN) WEIR_SAN=$(SAN) spec/run

# The binary, the Lua runtime, the stock policies, the dashboard's page, the
# documentation and the man page, an example configuration (never over an
# existing one) and the state directory.
install: $(BIN)
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(DATADIR)/lua/weir $(DESTDIR)$(DATADIR)/policies \
	    $(DESTDIR)$(DATADIR)/dashboard \
	    $(DESTDIR)$(DOCDIR)/policies $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(SYSCONFDIR)/weir \
	    $(DESTDIR)$(STATEDIR)
	install -m 755 $(BIN) $(DESTDIR)$(SBINDIR)/weir
	install -m 644 lua/weir/*.lua $(DESTDIR)$(DATADIR)/lua/weir/
	cp -R policies/. $(DESTDIR)$(DATADIR)/policies/
	install -m 644 clients/dashboard/index.html clients/dashboard/dashboard.js clients/dashboard/dashboard.css \
	    $(DESTDIR)$(DATADIR)/dashboard/
	install -m 644 README.md docs/*.md $(DESTDIR)$(DOCDIR)/
	install -m 644 docs/policies/*.md $(DESTDIR)$(DOCDIR)/policies/
	install -m 644 packaging/weir.8 $(DESTDIR)$(MANDIR)/man8/weir.8
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/weir/weir.conf.lua ]; then \
	    echo "kept $(DESTDIR)$(SYSCONFDIR)/weir/weir.conf.lua (the example is $(DATADIR)/weir.conf.lua)"; \
	else \
	    install -m 644 packaging/weir.conf.lua $(DESTDIR)$(SYSCONFDIR)/weir/weir.conf.lua; \
	fi
	install -m 644 packaging/weir.conf.lua $(DESTDIR)$(DATADIR)/weir.conf.lua

# A Debian package of this tree, made with dpkg-deb (packaging/build-deb):
# $(BUILD)/deb/weir_VERSION_ARCH.deb
deb: $(BIN)
	@rm -rf $(BUILD)/deb
	@$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/$(BUILD)/deb/work/debian/weir PREFIX=/usr \
	    SBINDIR=/usr/sbin SYSCONFDIR=/etc STATEDIR=/var/lib/weir >/dev/null
	@packaging/build-deb $(BUILD)/deb

bench:
	@.ci/deps bench
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory -C bench WEIR_BIN=$(CURDIR)/$(BIN)

soak: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory -C bench tools
	@WEIR_BIN=$(CURDIR)/$(BIN) timeout 900 luajit bench/soak

fuzz:
	@$(MAKE) --no-print-directory -C spec/fuzz fuzz OUT=$(CURDIR)/build/fuzz

clean:
	rm -rf build build-san
	@$(MAKE) --no-print-directory -C bench clean 2>/dev/null || true
