#!/usr/bin/env bash
# scripts/package-deb.sh [DIR]: builds the library twice in Release, static
# and shared, and packs both into DIR/libprocessmanager-dev_<version>_<arch>.deb
# (cpack -G DEB, cmake/package.cmake). DIR defaults to build-deb.
#   apt-get install ./build-deb/libprocessmanager-dev_*.deb
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$src/build-deb}" && cd "${1:-$src/build-deb}" && pwd)
jobs=${JOBS:-$(nproc)}
# /usr as the prefix gives Debian's multiarch libdir (lib/x86_64-linux-gnu).
# PM_DEB_BUILD_TYPE: the test suite packs an unoptimised build, which
# compiles in half the time and has the same files and exports.
common=(-G Ninja "-DCMAKE_BUILD_TYPE=${PM_DEB_BUILD_TYPE-Release}" -DCMAKE_INSTALL_PREFIX=/usr -DPM_INSTALL=ON
        -DPM_BUILD_TESTS=OFF -DPM_BUILD_EXAMPLES=OFF -DPM_BUILD_BENCH=OFF)
for variant in static shared; do
  shared=OFF
  [[ $variant == shared ]] && shared=ON
  cmake -S "$src" -B "$out/$variant" "${common[@]}" -DBUILD_SHARED_LIBS=$shared >/dev/null
  cmake --build "$out/$variant" -j "$jobs"
done
# One package from both trees: the headers, the CMake package and the
# examples are the same in each; the libraries and the targets files differ.
rm -f "$out"/libprocessmanager-dev_*.deb
(cd "$out" && cpack --config shared/CPackConfig.cmake -B "$out" \
  -D "CPACK_INSTALL_CMAKE_PROJECTS=$out/shared;processmanager;ALL;/;$out/static;processmanager;ALL;/" >/dev/null)
rm -rf "$out/_CPack_Packages"
ls "$out"/libprocessmanager-dev_*.deb
