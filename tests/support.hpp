// Test helpers: run coroutines to completion with a hang guard, and a few
// reusable services. Synchronisation is by events; timeouts only guard hangs.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <processmanager/processmanager.hpp>

// True in a build with a sanitizer, for g++ (which defines __SANITIZE_*)
// and clang++ (which answers __has_feature) alike.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PM_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(undefined_behavior_sanitizer)
#define PM_TEST_SANITIZED 1
#endif
#endif
#ifndef PM_TEST_SANITIZED
#define PM_TEST_SANITIZED 0
#endif

namespace pm::test {

using namespace std::chrono_literals;

/// A generous bound that turns a hang into a failure, never a pacing device.
inline constexpr auto hang_guard = std::chrono::seconds(60);

/// PM_TEST_SHARDS=N (N of 2 or more) runs the suite in sharded mode: every
/// io_context run_io runs gets N-1 more, one thread each, as shards of one
/// set (pm::shard_across), so each manager's children spread across them.
inline std::size_t test_shards() {
  const char* v = std::getenv("PM_TEST_SHARDS");
  if (v == nullptr) return 1;
  const long n = std::strtol(v, nullptr, 10);
  return n > 1 ? static_cast<std::size_t>(n) : 1;
}

/// An io_context that can be shut down before it is destroyed (the shards
/// of a set refer to each other, so all are shut down before any goes).
struct ShardContext : asio::io_context {
  using asio::execution_context::shutdown;
  using asio::io_context::io_context;
};

/// The shards run_io adds beside `io` in sharded mode, each on a thread of
/// its own until the set is let go: unsharded again, then stopped, shut
/// down and destroyed.
class ExtraShards {
 public:
  explicit ExtraShards(asio::io_context& io) : io_(io) {
    const std::size_t n = test_shards();
    if (n < 2) return;
    std::vector<asio::io_context*> all{&io};
    for (std::size_t i = 1; i < n; ++i) {
      extra_.push_back(std::make_unique<ShardContext>(1));
      all.push_back(extra_.back().get());
    }
    pm::shard_across(all);
    for (auto& c : extra_) {
      work_.emplace_back(c->get_executor());
      threads_.emplace_back([&c = *c] { c.run(); });
    }
  }
  ExtraShards(const ExtraShards&) = delete;
  ExtraShards& operator=(const ExtraShards&) = delete;
  ~ExtraShards() {
    if (extra_.empty()) return;
    pm::shard_across({&io_});
    work_.clear();
    for (auto& c : extra_) c->stop();
    for (auto& t : threads_) t.join();
    for (auto& c : extra_) c->shutdown();
  }

 private:
  asio::io_context& io_;
  std::vector<std::unique_ptr<ShardContext>> extra_;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::vector<std::thread> threads_;
};

/// Runs `io` on `threads` threads until it runs out of work. Fails the test
/// (and stops the io_context) if that takes longer than `guard`.
inline void run_io(asio::io_context& io, std::size_t threads = 1, std::chrono::milliseconds guard = hang_guard) {
  ExtraShards shards(io);
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread watchdog([&] {
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, guard, [&] { return done; })) {
      ADD_FAILURE() << "io_context still busy after the hang guard; stopping it";
      io.stop();
    }
  });
  std::vector<std::thread> pool;
  for (std::size_t i = 1; i < threads; ++i) pool.emplace_back([&io] { io.run(); });
  io.run();
  for (auto& t : pool) t.join();
  {
    std::lock_guard lock(mu);
    done = true;
  }
  cv.notify_all();
  watchdog.join();
}

/// Spawns `a` on a strand of `io` with a cancellation slot (as the manager
/// does), runs `io` on `threads` threads, and returns what `a` produced or
/// rethrows what it threw.
template <class T>
T run_coro(asio::io_context& io, asio::awaitable<T> a, std::size_t threads = 1) {
  std::optional<std::conditional_t<std::is_void_v<T>, bool, T>> result;
  std::exception_ptr error;
  bool finished = false;
  asio::cancellation_signal sig;
  if constexpr (std::is_void_v<T>) {
    asio::co_spawn(asio::make_strand(io), std::move(a),
                   asio::bind_cancellation_slot(sig.slot(), [&](std::exception_ptr e) {
                     error = e;
                     finished = true;
                   }));
  } else {
    asio::co_spawn(asio::make_strand(io), std::move(a),
                   asio::bind_cancellation_slot(sig.slot(), [&](std::exception_ptr e, T v) {
                     error = e;
                     if (!e) result.emplace(std::move(v));
                     finished = true;
                   }));
  }
  run_io(io, threads);
  if (!finished) throw std::runtime_error("run_coro: the coroutine did not finish");
  if (error) std::rethrow_exception(error);
  if constexpr (!std::is_void_v<T>) return std::move(*result);
}

template <class T>
T run_coro(asio::awaitable<T> a, std::size_t threads = 1) {
  asio::io_context io;
  return run_coro(io, std::move(a), threads);
}

/// A one-shot event a test can wait on from any thread.
class Event {
 public:
  void set() {
    // Notified under the lock: a waiter that returns and destroys the Event
    // cannot do so while this thread is still inside notify_all().
    std::lock_guard lock(mu_);
    set_ = true;
    cv_.notify_all();
  }
  bool wait(std::chrono::milliseconds guard = hang_guard) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, guard, [&] { return set_; });
  }
  bool is_set() const {
    std::lock_guard lock(mu_);
    return set_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

/// A coroutine service that idles on a long timer and records every control
/// message; it ends on shutdown (or, with `ignore_shutdown`, never by itself).
class IdleService : public Runnable {
 public:
  explicit IdleService(std::string name = "idle", bool ignore_shutdown = false)
      : name_(std::move(name)), ignore_shutdown_(ignore_shutdown), guard_(name_) {}

  asio::awaitable<void> process_start() override {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    auto ticker = co_await guard_.runtime_ticker();
    started.fetch_add(1);
    for (;;) {
      timer.expires_after(std::chrono::hours(1));
      auto op = co_await ticker.tick(timer.async_wait(asio::deferred));
      if (op.is_next()) continue;
      const auto& msg = op.control();
      if (msg.is_reload()) reloads.fetch_add(1);
      if (msg.is_custom()) customs.fetch_add(1);
      if (msg.is_shutdown()) {
        shutdowns.fetch_add(1);
        if (!ignore_shutdown_) break;
      }
    }
    stopped.fetch_add(1);
  }
  std::string process_name() const override { return name_; }
  std::shared_ptr<ProcessControlHandler> process_handle() override { return guard_.handle(); }
  bool is_running() const { return guard_.is_running(); }

  std::atomic<int> started{0};
  std::atomic<int> stopped{0};
  std::atomic<int> reloads{0};
  std::atomic<int> customs{0};
  std::atomic<int> shutdowns{0};

 private:
  std::string name_;
  bool ignore_shutdown_;
  RuntimeGuard guard_;
};

/// A service that throws `what` as soon as it has its ticker, or once it
/// receives a custom message (a trigger) when `on_trigger` is set.
class FailingService : public Runnable {
 public:
  explicit FailingService(std::string name, std::string what = "boom", bool on_trigger = false)
      : name_(std::move(name)), what_(std::move(what)), on_trigger_(on_trigger), guard_(name_) {}
  asio::awaitable<void> process_start() override {
    auto ticker = co_await guard_.runtime_ticker();
    if (on_trigger_) {
      for (;;) {
        auto msg = co_await ticker.next_control();
        if (msg.is_custom()) break;
        if (msg.is_shutdown()) co_return;
      }
    }
    throw std::runtime_error(what_);
  }
  std::string process_name() const override { return name_; }
  std::shared_ptr<ProcessControlHandler> process_handle() override { return guard_.handle(); }

 private:
  std::string name_;
  std::string what_;
  bool on_trigger_;
  RuntimeGuard guard_;
};

}  // namespace pm::test
