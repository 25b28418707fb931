// Helpers for the stop tests (stop_last, the notifier in its tree, stops
// belonging to their run): a service that journals and time-stamps what
// happens to it, and ways to find lines and events.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "lifecycle_support.hpp"

namespace pm::test::stops {

using namespace pm::test::lifecycle;
using Clock = std::chrono::steady_clock;

/// What a Svc does when told to stop.
struct SvcOpts {
  std::chrono::milliseconds linger{0};  ///< how long it takes to stop once told
  bool ignore_stop = false;             ///< keeps running on shutdown (until cancelled)
  bool ignore_cancel = false;           ///< ... and on cancellation too (abandoned), for `after_cancel`
  std::chrono::milliseconds after_cancel{300};
};

/// A service that journals "start N", "stop N", "end N", "cancelled N",
/// "gone N", "fail N", "pong N <run>"; custom(2) fails it, custom(3) ends
/// it, custom(5) answers "pong", custom(1000 + r) fails it only in run r.
class Svc : public pm::Runnable {
 public:
  Svc(std::string name, std::shared_ptr<Journal> j, SvcOpts o = {})
      : name_(std::move(name)), j_(std::move(j)), o_(o), guard_(name_) {}

  asio::awaitable<void> process_start() override {
    const int run = ++runs;
    j_->add("start " + name_);
    asio::steady_timer timer(co_await asio::this_coro::executor);
    auto ticker = co_await guard_.runtime_ticker();
    try {
      for (;;) {
        timer.expires_after(std::chrono::hours(1));
        auto wait = timer.async_wait(asio::deferred);
        auto op = co_await ticker.tick(wait);
        if (op.is_next()) continue;
        const auto& msg = op.control();
        if (const int* code = msg.custom_if<int>()) {
          if (*code == 2 || *code == 1000 + run) {
            j_->add("fail " + name_);
            throw std::runtime_error(name_ + " was told to fail");
          }
          if (*code == 3) {
            j_->add("end " + name_);
            co_return;
          }
          if (*code == 5) j_->add("pong " + name_ + " " + std::to_string(run));
        } else if (msg.is_shutdown()) {
          stamp("stop");
          j_->add("stop " + name_);
          break;
        }
      }
    } catch (const boost::system::system_error&) {
      stamp("cancelled");
      j_->add("cancelled " + name_);
      throw;
    }
    if (!o_.ignore_stop) {
      if (o_.linger.count() > 0) {
        timer.expires_after(o_.linger);
        co_await timer.async_wait(asio::use_awaitable);
      }
      stamp("end");
      j_->add("end " + name_);
      co_return;
    }
    try {
      timer.expires_after(std::chrono::hours(1));
      co_await timer.async_wait(asio::use_awaitable);
    } catch (const std::exception&) {
      stamp("cancelled");
      j_->add("cancelled " + name_);
      if (!o_.ignore_cancel) throw;
    }
    co_await asio::this_coro::reset_cancellation_state();
    timer.expires_after(o_.after_cancel);
    boost::system::error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    j_->add("gone " + name_);
  }
  std::string process_name() const override { return name_; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard_.handle(); }

  std::optional<Clock::time_point> when(const std::string& what) const {
    std::lock_guard lock(mu_);
    auto it = stamps_.find(what);
    if (it == stamps_.end()) return std::nullopt;
    return it->second;
  }

  std::atomic<int> runs{0};

 private:
  void stamp(const std::string& what) {
    std::lock_guard lock(mu_);
    stamps_[what] = Clock::now();
  }
  std::string name_;
  std::shared_ptr<Journal> j_;
  SvcOpts o_;
  pm::RuntimeGuard guard_;
  mutable std::mutex mu_;
  std::map<std::string, Clock::time_point> stamps_;
};

inline std::ptrdiff_t idx(const std::vector<std::string>& lines, const std::string& s) {
  auto it = std::find(lines.begin(), lines.end(), s);
  return it == lines.end() ? -1 : it - lines.begin();
}

inline std::string joined(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out.append(l).append(" | ");
  return out;
}

inline std::ptrdiff_t event_index(const std::vector<pm::Event>& events, const std::string& path, pm::EventKind kind,
                                  std::optional<ChildState> state = std::nullopt) {
  for (std::size_t i = 0; i < events.size(); ++i) {
    const auto& e = events[i];
    if (e.path != path || e.kind != kind) continue;
    if (state && (!e.state || *e.state != *state)) continue;
    return static_cast<std::ptrdiff_t>(i);
  }
  return -1;
}

inline ChildOptions last_opts() { return ChildOptions{.stop_last = true}; }

}  // namespace pm::test::stops
