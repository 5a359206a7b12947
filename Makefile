# Thin driver over CMake: one build tree per Lua (build/lua5.4, build/lua5.3, build/luajit).
# `make` builds for Lua 5.4; `make test` builds all three and runs everything through ctest.
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
BUILD ?= build
CMAKE_FLAGS ?=

.PHONY: all deps build-all test bench demo asan valgrind clean

all: deps
	@scripts/build.sh 5.4

deps:
	@scripts/deps.sh

build-all: deps
	@scripts/build.sh 5.4 5.3 luajit

test: deps
	@scripts/test.sh

bench: deps
	@scripts/build.sh 5.4 5.3 luajit
	@bench/run.sh $(BUILD)/lua5.4

demo: deps
	@scripts/build.sh 5.4 >/dev/null
	@scripts/demo.sh

# libFuzzer harnesses (tests/fuzz): each runs FUZZ_SECONDS (default 600) with ASan + UBSan.
.PHONY: fuzz
fuzz: deps
	@scripts/build.sh 5.4
	@scripts/fuzz.sh

clean:
	rm -rf $(BUILD)

# The HTML reference (LDoc): $(BUILD)/doc/index.html. The man page is doc/cxone.1 (man -l doc/cxone.1).
.PHONY: doc
doc: deps
	@sh doc/ldoc.sh $(BUILD)/doc
