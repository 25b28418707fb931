#!/usr/bin/env bash
# tests/consumer/deb.sh SOURCE WORK: makes the Debian package
# (scripts/package-deb.sh), checks its control fields, its contents and the
# shared library's exports, unpacks it with dpkg -x into WORK/root, and
# builds and runs outside programs against what was unpacked: through CMake
# (shared, then static), through pkg-config and the compiler alone, and the
# packaged examples as a project of their own.
set -euo pipefail
src=$1
work=$2
rm -rf "$work"
mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }

# Unoptimised (no build type): the same files and public exports as a
# Release package, in half the time CI has for it. `make deb` is Release.
deb=$(PM_DEB_BUILD_TYPE= "$src/scripts/package-deb.sh" "$work/pkg" | tail -1)
echo "package: $(basename "$deb")"

# The control file: the name, and the Debian packages the headers and the
# library need.
[[ $(dpkg-deb -f "$deb" Package) == libprocessmanager-dev ]] || fail "Package is $(dpkg-deb -f "$deb" Package)"
depends=$(dpkg-deb -f "$deb" Depends)
for d in libboost1.81-dev libboost-json1.81-dev; do
  grep -qw -- "$d" <<<"$depends" || fail "Depends ($depends) lacks $d"
done

arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
lib=usr/lib/$arch
soname=libprocessmanager.so.0.1
contents=$(dpkg-deb -c "$deb" | awk '{print $6}')
for f in usr/include/processmanager/processmanager.hpp usr/include/processmanager/task_scope.hpp \
         "$lib/libprocessmanager.a" "$lib/$soname.0" "$lib/$soname" "$lib/libprocessmanager.so" \
         "$lib/cmake/processmanager/processmanagerConfig.cmake" \
         "$lib/cmake/processmanager/processmanager-shared-targets.cmake" \
         "$lib/cmake/processmanager/processmanager-static-targets.cmake" \
         "$lib/pkgconfig/processmanager.pc" \
         usr/share/doc/processmanager/examples/CMakeLists.txt usr/share/doc/processmanager/examples/orders.cpp; do
  grep -qx "\./$f" <<<"$contents" || fail "the package lacks /$f"
done

root=$work/root
dpkg -x "$deb" "$root"
so=$root/$lib/$soname.0
[[ $(readelf -d "$so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p') == "$soname" ]] || fail "SONAME is not $soname"

# Exports: the public API, and Boost's process-wide state (one copy in the
# process); not the library's internals.
exports=$(nm -D --defined-only -C "$so")
for s in 'pm::backoff_delay(' 'typeinfo for pm::ProcessError' 'pm::TaskScope::spawn' 'pm::ProcessManagerBuilder::build(' \
         'pm::detail::throw_not_next(' \
         'boost::asio::detail::call_stack<boost::asio::detail::thread_context, boost::asio::detail::thread_info_base>::top_'; do
  grep -qF -- "$s" <<<"$exports" || fail "the shared library does not export $s"
done
# Members of classes defined in src/, some of them named (but not defined)
# by the public headers: hidden, wherever their names appear.
for s in ManagerCore ManagerHandle ManagerRun HealthState HealthConnection TaskScopeState BlockingState SystemdService; do
  # A member (its name, then its parameters; a std:: template that merely
  # returns an internal type has a space first), or the class's vtable.
  internal=$(grep -E "^[0-9a-f]+ [A-Za-z] (pm::detail::$s::[^ (]*\(|(vtable|typeinfo) for pm::detail::$s$)" <<<"$exports" \
             | head -3 || true)
  [[ -z $internal ]] || fail "the shared library exports internals: $internal"
done
hidden=$(nm --defined-only -C "$work/pkg/shared/CMakeFiles/processmanager.dir/src/core/manager_core.cpp.o" \
         | grep -c 'pm::detail::ManagerCore' || true)
[[ $hidden -gt 0 ]] || fail "the internal names checked above do not exist: the check proves nothing"
echo "exports: $(grep -c ' pm::' <<<"$exports") of pm::, $(wc -l <<<"$exports") in all"

needs() { readelf -d "$1" | grep -q "(NEEDED).*\[$soname\]"; }
prefix=$root/usr

# CMake, the shared library (the default when both are installed).
cmake -S "$src/tests/consumer" -B "$work/cmake-shared" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/cmake-shared" >/dev/null
needs "$work/cmake-shared/consumer" || fail "the CMake consumer does not load $soname"
"$work/cmake-shared/consumer"
echo "consumer (CMake, shared) built and ran"

# CMake, the static library.
cmake -S "$src/tests/consumer" -B "$work/cmake-static" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" \
  -Dprocessmanager_STATIC=ON >/dev/null
cmake --build "$work/cmake-static" >/dev/null
! needs "$work/cmake-static/consumer" || fail "the static CMake consumer loads $soname"
"$work/cmake-static/consumer"
echo "consumer (CMake, static) built and ran"

# pkg-config and the compiler alone; the .pc file brings -std=c++20 itself.
export PKG_CONFIG_PATH=$root/$lib/pkgconfig
[[ $(pkg-config --variable=cxxstd processmanager) == c++20 ]] || fail "the .pc file's cxxstd is not c++20"
read -r -a flags <<<"$(pkg-config --cflags --libs processmanager)"
c++ "$src/tests/consumer/main.cpp" "${flags[@]}" -o "$work/consumer-pc"
needs "$work/consumer-pc" || fail "the pkg-config consumer does not load $soname"
LD_LIBRARY_PATH=$root/$lib "$work/consumer-pc"
echo "consumer (pkg-config: ${flags[*]}) built and ran"

# The packaged examples, a project of their own against the shared
# library: every public entity they use is exported. Eight of them, which
# between them use every part of the API (health server, TaskScope,
# blocking services, signals, custom messages, restarts), unoptimised to
# keep CI's time; two of them run.
examples=(orders supervision_tree restart_supervisor signals http_drain reload_config file_writer retry_forever)
cmake -S "$prefix/share/doc/processmanager/examples" -B "$work/examples" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/examples" --target "${examples[@]}" >/dev/null
for e in supervision_tree restart_supervisor; do
  needs "$work/examples/$e" || fail "example $e does not load $soname"
  PM_LOG=off "$work/examples/$e" >/dev/null || fail "example $e failed against the package"
done
echo "examples: ${#examples[@]} built against the package, 2 ran"
echo "deb consumer: all checks passed"
