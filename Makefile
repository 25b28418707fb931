# The two commands of the README, plus the ones developers use.
#   make demo   build and run the demo tree for a few seconds (Ctrl-C stops it early)
#   make test   build everything and run the whole test suite
#   make bench  Release build, run the micro benchmarks
#   make asan / make tsan      the whole suite under AddressSanitizer+UBSan / ThreadSanitizer (g++)
#   make clang-asan            the whole suite built by clang++ 14 under ASan+UBSan
#   make tidy / make format-check   clang-tidy on src/ and include/, clang-format check
#   make stress / make soak    the long runs of the stress test and of the soak
#   make docs                  the API reference with doxygen (warnings fail it)
#   make release-check         the whole tree (library, tests, examples, benchmarks) built in Release
#   make no-deprecated-check   the library compiled with BOOST_ASIO_NO_DEPRECATED
#   make deb                   the Debian package libprocessmanager-dev (build-deb/)
BUILD    ?= build
BUILD_REL ?= build-release
JOBS     ?= $(shell nproc)
DEMO_FOR ?= 5s

.PHONY: all deps configure build test demo bench clean asan clang-asan tsan tidy format format-check stress soak docs \
	release-check no-deprecated-check deb

STRESS_RUNS ?= 1000
SOAK_CYCLES ?= 10000
SOURCES := $(shell git ls-files '*.cpp' '*.hpp' 2>/dev/null)

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD)/build.ninja: | deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo

configure: deps $(BUILD)/build.ninja

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The demo tree (examples/demo.cpp): health endpoints, restarts, reloads.
# DEMO_FOR=0 runs until Ctrl-C; DEMO_PORT picks the health port (0: any).
# Builds the library and the demo only, not the test suite.
DEMO_PORT ?= 0
demo: configure
	cmake --build $(BUILD) -j $(JOBS) --target demo
	./$(BUILD)/examples/demo $(if $(filter 0,$(DEMO_FOR)),,--for $(DEMO_FOR)) --port $(DEMO_PORT)

$(BUILD_REL)/build.ninja: | deps
	cmake -S . -B $(BUILD_REL) -G Ninja -DCMAKE_BUILD_TYPE=Release -DPM_BUILD_TESTS=OFF -DPM_BUILD_EXAMPLES=OFF

BENCH_REPEAT ?= 3
bench: deps $(BUILD_REL)/build.ninja
	cmake --build $(BUILD_REL) -j $(JOBS) --target pm_micro pm_load
	# Interleaved repetitions: each pair sees the same machine weather, so
	# the ratios hold on a noisy (virtual) machine; the table reads medians.
	./$(BUILD_REL)/bench/pm_micro --benchmark_repetitions=30 --benchmark_enable_random_interleaving=true \
	  --benchmark_report_aggregates_only=true --benchmark_min_time=0.05 \
	  --benchmark_out=$(BUILD_REL)/pm_micro.csv --benchmark_out_format=csv
	./$(BUILD_REL)/bench/pm_load --n 1000,10000,100000 --threads 1,2 --repeat $(BENCH_REPEAT) \
	  | tee $(BUILD_REL)/pm_load.jsonl
	# Start-up again with the heap's pages touched first: the library's own
	# cost, without the first-touch page faults both sides pay.
	./$(BUILD_REL)/bench/pm_load --scenario startup --prefault --n 1000,10000,100000 --threads 1 \
	  --repeat $(BENCH_REPEAT) | tee -a $(BUILD_REL)/pm_load.jsonl
	# Two threads, one io_context each (RunOptions::sharded), against one thread.
	./$(BUILD_REL)/bench/pm_load --sharded --n 100000 --threads 2 --repeat $(BENCH_REPEAT) \
	  | tee -a $(BUILD_REL)/pm_load.jsonl
	# The ratio table; BENCH_STRICT=1 makes a missed target fail the target.
	status=0; awk -v STRICT=$(BENCH_STRICT) -f bench/report.awk $(BUILD_REL)/pm_micro.csv $(BUILD_REL)/pm_load.jsonl \
	  > $(BUILD_REL)/bench-report.md || status=$$?; cat $(BUILD_REL)/bench-report.md; exit $$status

# The whole tree with default options in Release: -O3 brings warnings
# (-Wrestrict, -Wmaybe-uninitialized...) that RelWithDebInfo's -O2 does not,
# and -Werror makes them fail the build.
BUILD_RELCHECK ?= build-release-check
release-check: deps
	cmake -S . -B $(BUILD_RELCHECK) -G Ninja -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD_RELCHECK) -j $(JOBS)

# The library without Asio's deprecated interfaces (users may define
# BOOST_ASIO_NO_DEPRECATED; our headers and sources must not need them).
BUILD_NODEP ?= build-no-deprecated
no-deprecated-check: deps
	cmake -S . -B $(BUILD_NODEP) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS=-DBOOST_ASIO_NO_DEPRECATED \
	  -DPM_BUILD_TESTS=OFF -DPM_BUILD_EXAMPLES=OFF -DPM_BUILD_BENCH=OFF -DPM_INSTALL=OFF -DPM_WERROR=ON
	cmake --build $(BUILD_NODEP) -j $(JOBS) --target processmanager

# A sanitizer report fails the test that printed it, and so the run.
asan: deps
	cmake --preset asan
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure -j $(JOBS)

clang-asan: deps
	cmake --preset clang-asan
	cmake --build build-clang-asan -j $(JOBS)
	cd build-clang-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure -j $(JOBS)

tsan: deps
	cmake --preset tsan
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 ctest --output-on-failure -j $(JOBS)

tidy: deps
	cmake -S . -B build-tidy -G Ninja -DCMAKE_EXPORT_COMPILE_COMMANDS=ON -DPM_BUILD_TESTS=OFF \
	  -DPM_BUILD_EXAMPLES=OFF -DPM_BUILD_BENCH=OFF >/dev/null
	run-clang-tidy -quiet -p build-tidy -j $(JOBS) '$(CURDIR)/src/.*' >build-tidy/tidy.log 2>&1 \
	  || { grep -E 'warning|error' build-tidy/tidy.log | head -50; exit 1; }
	@echo "clang-tidy: no findings"

# The API reference (doxygen, docs/Doxyfile): build-docs/html/index.html.
# Any doxygen warning (an undocumented public entity, say) fails it.
docs: deps
	rm -rf build-docs && mkdir -p build-docs
	doxygen docs/Doxyfile || { cat build-docs/warnings.log; exit 1; }
	@test ! -s build-docs/warnings.log || { cat build-docs/warnings.log; exit 1; }
	@echo "API reference: build-docs/html/index.html (no warnings)"

# libprocessmanager-dev: the static and the shared library (Release), the
# headers, the CMake package, the pkg-config file and the examples' sources.
#   apt-get install ./build-deb/libprocessmanager-dev_*.deb
deb: deps
	JOBS=$(JOBS) bash scripts/package-deb.sh build-deb

format:
	clang-format -i $(SOURCES)

format-check:
	clang-format --dry-run --Werror $(SOURCES)
	@echo "clang-format: clean"

MODEL_SEEDS ?= 10000
stress: build
	PM_STRESS_RUNS=$(STRESS_RUNS) PM_MODEL_SEEDS=$(MODEL_SEEDS) PM_LOG=off ./$(BUILD)/tests/pm_tests --gtest_filter='stress.*:model.*'

soak: build
	./$(BUILD)/tests/pm_soak --cycles $(SOAK_CYCLES) --services 100

clean:
	rm -rf $(BUILD) $(BUILD_REL) $(BUILD_RELCHECK) $(BUILD_NODEP) build-asan build-clang-asan build-tsan build-tidy \
	  build-docs build-deb
