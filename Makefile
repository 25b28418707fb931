# The two commands of the README, plus the ones developers use.
#   make demo   build and run the seed example for a few seconds (Ctrl-C stops it early)
#   make test   build everything and run the whole test suite
#   make bench  Release build, run the micro benchmarks
BUILD    ?= build
BUILD_REL ?= build-release
JOBS     ?= $(shell nproc)
DEMO_FOR ?= 5s

.PHONY: all deps configure build test demo bench clean

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

demo: build
	./$(BUILD)/examples/seed_example --for $(DEMO_FOR)

$(BUILD_REL)/build.ninja: | deps
	cmake -S . -B $(BUILD_REL) -G Ninja -DCMAKE_BUILD_TYPE=Release -DPM_BUILD_TESTS=OFF -DPM_BUILD_EXAMPLES=OFF

bench: deps $(BUILD_REL)/build.ninja
	cmake --build $(BUILD_REL) -j $(JOBS) --target pm_micro
	./$(BUILD_REL)/bench/pm_micro --benchmark_repetitions=3 --benchmark_report_aggregates_only=true

clean:
	rm -rf $(BUILD) $(BUILD_REL)
