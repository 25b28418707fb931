// Helpers for the adversarial review tests of the core (test_core_review*.cpp):
// waits run in coroutines of their own, with a cancellation signal, and
// their outcome as a word.
#pragma once

#include <processmanager/processmanager.hpp>

#include <gtest/gtest.h>

#include <future>
#include <string>

#include "../src/core/run_state.hpp"
#include "lifecycle_support.hpp"

namespace pm::test::review {

using namespace pm::test::lifecycle;
using Strand = asio::strand<asio::io_context::executor_type>;

inline std::shared_ptr<pm::detail::ManagerCore> core_of(pm::ProcessManager& m) {
  auto h = std::dynamic_pointer_cast<pm::detail::ManagerHandle>(m.process_handle());
  return h ? h->core() : nullptr;
}

/// "true", "false", "aborted" or "other: ..." for a wait.
template <class T>
asio::awaitable<std::string> outcome(asio::awaitable<T> what) {
  try {
    if constexpr (std::is_void_v<T>) {
      co_await std::move(what);
      co_return "completed";
    } else {
      const bool r = co_await std::move(what);
      co_return r ? "true" : "false";
    }
  } catch (const boost::system::system_error& e) {
    co_return e.code() == asio::error::operation_aborted ? "aborted" : std::string("other: ") + e.what();
  } catch (const std::exception& e) {
    co_return std::string("other: ") + e.what();
  }
}

/// Spawns `what` on `strand` with `signal`'s slot; the marker is journaled
/// in the same handler that then suspends in the wait.
template <class T>
std::future<std::string> spawn_wait(const Strand& strand, asio::cancellation_signal& signal, asio::awaitable<T> what,
                                    const std::shared_ptr<Journal>& j, std::string marker, bool total_filter = false) {
  auto done = std::make_shared<std::promise<std::string>>();
  auto fut = done->get_future();
  asio::co_spawn(
      strand,
      [what = std::move(what), j, marker, total_filter]() mutable -> asio::awaitable<std::string> {
        if (total_filter) co_await asio::this_coro::reset_cancellation_state(asio::enable_total_cancellation());
        j->add(marker);
        co_return co_await outcome(std::move(what));
      },
      asio::bind_cancellation_slot(signal.slot(), [done](const std::exception_ptr& e, std::string r) {
        done->set_value(e ? std::string("exception") : std::move(r));
      }));
  return fut;
}

/// Runs a no-op through `strand` and waits for it: everything posted to the
/// strand before has run.
inline void drain(const Strand& strand) {
  std::promise<void> p;
  asio::post(strand, [&p] { p.set_value(); });
  p.get_future().wait();
}

inline bool has_event(const EventRecorder& rec, const std::string& path, ChildState state, const std::string& detail) {
  for (const auto& e : rec.events()) {
    if (e.kind == EventKind::state && e.path == path && e.state == state && e.detail == detail) return true;
  }
  return false;
}

inline std::string story_of(const EventRecorder& rec, const std::string& path) {
  std::string out;
  for (const auto& e : rec.events()) {
    if (e.path != path) continue;
    out += std::string(pm::to_string(e.kind));
    // Appended piece by piece: g++ 12 at -O3 reports a false -Wrestrict on
    // "literal" + std::string (make release-check).
    if (e.kind == EventKind::state) out.append(":").append(pm::to_string(e.state.value()));
    if (!e.detail.empty()) out.append("(").append(e.detail).append(")");
    out += "; ";
  }
  return out;
}

}  // namespace pm::test::review
