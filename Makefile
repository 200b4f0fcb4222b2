# weir — build, run, test, bench.
#   make            build build/weir (SAN=1: ASan+UBSan build in build-san/)
#   make run        install what is missing, build, start the echo example
#   make test       install what is missing, build, run every spec
#   make bench      weir against direct, nginx and HAProxy (see bench/README.md)

SAN      ?= 0
CC       ?= cc
PKGS     := luajit libuv openssl libcurl
CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE -fno-strict-aliasing \
            -DWEIR_LUA_DIR='"$(CURDIR)/lua"'
LDLIBS   += -lm
LDFLAGS  += -rdynamic      # policies reach weir_ffi_* through LuaJIT's FFI

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

.PHONY: all deps run test bench clean

all: $(BIN)

$(BUILD)/%.o: core/%.c $(wildcard core/*.h) | $(BUILD)
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

bench: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory -C bench WEIR_BIN=$(CURDIR)/$(BIN)

clean:
	rm -rf build build-san
	@$(MAKE) --no-print-directory -C bench clean 2>/dev/null || true
