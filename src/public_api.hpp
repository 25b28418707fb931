// The shared library's export list, forced first into each of its sources
// (CMakeLists.txt, BUILD_SHARED_LIBS). The library compiles with hidden
// visibility, so only what is declared here, under `push(default)`, is
// exported: everything the public headers declare (their inline code
// calls the pm::detail functions they declare, so those are exported too),
// and Boost's. Boost is here because Asio and Beast are header-only and
// keep process-wide state in static members of templates and in function
// statics (the call stack that says which thread runs an io_context, error
// categories compared by address, service ids): hidden, the library would
// hold a second copy of each, and a program's io_context would not know
// the library's threads as its own. Declarations made only in src/ stay
// hidden: they are not part of the API and are free to change.
#pragma once

// The public headers forward-declare the library's own state (pointers to
// implementation): declared here first, hidden, those classes stay
// internal although the headers name them.
namespace pm::detail {
class __attribute__((visibility("hidden"))) ManagerCore;
class __attribute__((visibility("hidden"))) ManagerHandle;
struct __attribute__((visibility("hidden"))) CoreAccess;
struct __attribute__((visibility("hidden"))) HealthState;
class __attribute__((visibility("hidden"))) SystemdService;
class __attribute__((visibility("hidden"))) BlockingState;
struct __attribute__((visibility("hidden"))) TaskScopeState;
struct __attribute__((visibility("hidden"))) LambdaReadiness;
}  // namespace pm::detail

#pragma GCC visibility push(default)
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <boost/system/system_error.hpp>

#include <processmanager/processmanager.hpp>
#pragma GCC visibility pop
