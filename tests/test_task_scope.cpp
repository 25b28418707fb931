// TaskScope: spawn, close, drain within a grace period, cancellation,
// abandonment, failures collected or failing the owner, executors that die
// first, any thread, and a randomized run against a model of what a drain
// must report.
#include <processmanager/task_scope.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <functional>
#include <future>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <processmanager/processmanager.hpp>

#include "support.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;
using pm::test::run_coro;
using pm::test::run_io;

/// Ends when told through its timer's cancellation by release(), or by a
/// terminal cancellation; counts how it ended.
struct Waits {
  std::atomic<int> released{0};
  std::atomic<int> cancelled{0};
};

/// A sub-task that waits until cancelled and then ends. Cancelled before
/// its wait began, its co_await throws operation_aborted instead (Asio's
/// throw_if_cancelled): both count.
asio::awaitable<void> until_cancelled(std::shared_ptr<Waits> w) {
  try {
    asio::steady_timer t(co_await asio::this_coro::executor, asio::steady_timer::time_point::max());
    auto [ec] = co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec) w->cancelled.fetch_add(1);
  } catch (const boost::system::system_error& e) {
    if (e.code() == asio::error::operation_aborted) w->cancelled.fetch_add(1);
    throw;
  }
}

/// A sub-task that needs `hops` turns of its executor, then ends.
asio::awaitable<void> hops(int n, std::shared_ptr<std::atomic<int>> done) {
  for (int i = 0; i < n; ++i) co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
  done->fetch_add(1);
}

asio::awaitable<void> throws(std::string what) {
  co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
  throw std::runtime_error(what);
}

/// A sub-task that ignores cancellation: it waits on a timer that no
/// cancellation reaches, until `io` is destroyed.
asio::awaitable<void> ignores_cancellation() {
  co_await asio::this_coro::reset_cancellation_state(asio::disable_cancellation());
  asio::steady_timer t(co_await asio::this_coro::executor, asio::steady_timer::time_point::max());
  co_await t.async_wait(asio::use_awaitable);
}

/// Drains `scope` on `io`, which other threads run: the report, or the
/// drain's exception, arrives through the future.
std::future<pm::DrainReport> drain_from_outside(asio::io_context& io, pm::TaskScope& scope,
                                                std::chrono::nanoseconds grace, std::chrono::nanoseconds abandon) {
  auto result = std::make_shared<std::promise<pm::DrainReport>>();
  asio::co_spawn(io, scope.drain(grace, abandon), [result](std::exception_ptr e, pm::DrainReport r) {
    if (e) {
      result->set_exception(e);
    } else {
      result->set_value(std::move(r));
    }
  });
  return result->get_future();
}

std::string what(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    return ex.what();
  }
}

TEST(task_scope, drain_waits_for_work_that_finishes_within_the_grace_period) {
  asio::io_context io;
  auto done = std::make_shared<std::atomic<int>>(0);
  const auto report = run_coro(io, [](std::shared_ptr<std::atomic<int>> done) -> asio::awaitable<pm::DrainReport> {
    const auto ex = co_await asio::this_coro::executor;  // not inside the next line: GCC PR 100611
    pm::TaskScope scope(ex, {.name = "work"});
    for (int i = 0; i < 50; ++i) scope.spawn(hops(1 + i % 7, done), std::string("t").append(std::to_string(i)));
    EXPECT_EQ(scope.running(), 50u);
    EXPECT_EQ(scope.spawned(), 50u);
    auto r = co_await scope.drain(std::chrono::nanoseconds::max(), 0s);
    EXPECT_EQ(scope.running(), 0u);
    EXPECT_TRUE(scope.closed());
    co_return r;
  }(done));
  EXPECT_EQ(done->load(), 50);
  EXPECT_EQ(report.finished, 50u);
  EXPECT_TRUE(report.cancelled.empty());
  EXPECT_TRUE(report.abandoned.empty());
  EXPECT_TRUE(report.clean());
}

TEST(task_scope, at_the_grace_period_the_rest_is_cancelled_terminally_and_named_in_spawn_order) {
  asio::io_context io;
  auto w = std::make_shared<Waits>();
  auto done = std::make_shared<std::atomic<int>>(0);
  const auto report = run_coro(io, [](auto w, auto done) -> asio::awaitable<pm::DrainReport> {
    const auto ex = co_await asio::this_coro::executor;  // not inside the next line: GCC PR 100611
    pm::TaskScope scope(ex);
    scope.spawn(until_cancelled(w), "conn-1");
    scope.spawn(hops(1, done));  // unnamed: "#2"
    scope.spawn(until_cancelled(w));
    scope.spawn(until_cancelled(w), "conn-4");
    co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    co_return co_await scope.drain(20ms, std::chrono::nanoseconds::max());
  }(w, done));
  EXPECT_EQ(report.cancelled, (std::vector<std::string>{"conn-1", "#3", "conn-4"}));
  EXPECT_TRUE(report.abandoned.empty());
  EXPECT_EQ(w->cancelled.load(), 3);
  EXPECT_EQ(done->load(), 1);
  EXPECT_FALSE(report.clean());
}

TEST(task_scope, a_grace_of_zero_cancels_at_once_and_a_negative_one_counts_as_zero) {
  for (const auto grace :
       {std::chrono::nanoseconds(0), std::chrono::nanoseconds(-5s), std::chrono::nanoseconds::min()}) {
    asio::io_context io;
    auto w = std::make_shared<Waits>();
    const auto report = run_coro(io, [](auto w, auto grace) -> asio::awaitable<pm::DrainReport> {
      const auto ex = co_await asio::this_coro::executor;  // not inside the next line: GCC PR 100611
      pm::TaskScope scope(ex);
      for (int i = 0; i < 3; ++i) scope.spawn(until_cancelled(w));
      co_return co_await scope.drain(grace, 10s);
    }(w, grace));
    EXPECT_EQ(report.cancelled.size(), 3u);
    EXPECT_EQ(w->cancelled.load(), 3);
  }
}

TEST(task_scope, a_task_that_ignores_cancellation_is_abandoned_after_the_abandon_period) {
  auto io = std::make_unique<asio::io_context>();
  auto w = std::make_shared<Waits>();
  pm::TaskScope scope(io->get_executor(), {.name = "s"});
  scope.spawn(ignores_cancellation(), "stubborn");
  scope.spawn(until_cancelled(w), "polite");
  std::optional<pm::DrainReport> report;
  asio::co_spawn(*io, scope.drain(0s, 100ms), [&](std::exception_ptr e, pm::DrainReport r) {
    EXPECT_FALSE(e);
    report = std::move(r);
    io->stop();  // the stubborn one holds the io_context for ever
  });
  run_io(*io);
  ASSERT_TRUE(report);
  EXPECT_EQ(report->cancelled, (std::vector<std::string>{"stubborn", "polite"}));
  EXPECT_EQ(report->abandoned, std::vector<std::string>{"stubborn"});
  EXPECT_EQ(report->finished, 0u);
  EXPECT_EQ(w->cancelled.load(), 1);
  EXPECT_EQ(scope.running(), 1u);
  // Its io_context goes first: the frame goes with it, and its place in the scope.
  io.reset();
  EXPECT_EQ(scope.running(), 0u);
}

TEST(task_scope, spawn_after_close_throws_scope_closed_naming_the_scope_and_the_task) {
  asio::io_context io;
  pm::TaskScope scope(io.get_executor(), {.name = "api/connections"});
  scope.close();
  scope.close();  // idempotent
  try {
    scope.spawn(hops(1, std::make_shared<std::atomic<int>>(0)), "conn-7");
    FAIL() << "spawn after close did not throw";
  } catch (const pm::ScopeClosed& e) {
    EXPECT_NE(std::string(e.what()).find("'api/connections'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'conn-7'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(scope.spawned(), 0u);
  EXPECT_EQ(io.poll(), 0u);  // the refused task never ran
}

TEST(task_scope, failures_are_collected_named_counted_and_capped) {
  asio::io_context io;
  auto done = std::make_shared<std::atomic<int>>(0);
  std::vector<pm::TaskFailure> seen_before_drain;
  std::uint64_t failed = 0;
  const auto report = run_coro(io, [&]() -> asio::awaitable<pm::DrainReport> {
    const auto ex = co_await asio::this_coro::executor;  // not inside the next line: GCC PR 100611
    pm::TaskScope scope(ex, {.name = "s", .keep_errors = 2});
    scope.spawn(throws("first"), "a");
    scope.spawn(hops(3, done), "ok");
    scope.spawn(throws("second"), "b");
    scope.spawn(throws("third"));
    for (int i = 0; i < 5; ++i) co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    seen_before_drain = scope.errors();
    failed = scope.failed();
    auto r = co_await scope.drain(1min);
    EXPECT_TRUE(scope.errors().empty()) << "a drain reports failures once";
    co_return r;
  }());
  EXPECT_EQ(failed, 3u);
  ASSERT_EQ(seen_before_drain.size(), 2u);
  EXPECT_EQ(seen_before_drain[0].name, "a");
  EXPECT_EQ(what(seen_before_drain[0].error), "first");
  EXPECT_EQ(seen_before_drain[1].name, "b");
  ASSERT_EQ(report.failures.size(), 2u);
  EXPECT_EQ(report.failures_dropped, 1u);
  EXPECT_FALSE(report.clean());
  EXPECT_EQ(done->load(), 1);  // collect: the others went on
}

/// A service that serves "connections" in a scope that fails it.
class Server : public pm::Runnable {
 public:
  asio::awaitable<void> process_start() override {
    auto ticker = co_await guard_.runtime_ticker();
    const auto ex = co_await asio::this_coro::executor;  // not inside the next line: GCC PR 100611
    pm::TaskScope scope(
        ex, {.name = "server/connections", .on_error = pm::TaskErrors::fail_owner, .owner = guard_.handle()});
    for (int i = 0; i < 3; ++i) scope.spawn(until_cancelled(waits), std::string("conn-").append(std::to_string(i)));
    scope.spawn(throws("peer sent garbage"), "conn-bad");
    for (;;) {
      auto msg = co_await ticker.next_control();
      if (msg.is_shutdown()) break;
    }
    try {
      scope.spawn(until_cancelled(waits), "late");
      spawn_after_trip_refused = false;
    } catch (const pm::ScopeClosed&) {
      spawn_after_trip_refused = true;
    }
    co_await scope.drain(10s);  // throws the sub-task's failure
  }
  std::string process_name() const override { return "server"; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard_.handle(); }

  std::shared_ptr<Waits> waits = std::make_shared<Waits>();
  bool spawn_after_trip_refused = false;

 private:
  pm::RuntimeGuard guard_{"server"};
};

TEST(task_scope, under_fail_owner_a_sub_tasks_failure_stops_its_siblings_and_fails_the_service_with_it) {
  auto server = std::make_shared<Server>();
  auto m = pm::ProcessManagerBuilder().name("app").pre_insert(server).build();
  asio::io_context io;
  try {
    run_coro(io, m->process_start(), 2);
    FAIL() << "the manager did not fail";
  } catch (const pm::ProcessError& e) {
    const std::string text = e.what();
    EXPECT_NE(text.find("app/server"), std::string::npos) << text;
    EXPECT_NE(text.find("peer sent garbage"), std::string::npos) << text;
  }
  EXPECT_EQ(server->waits->cancelled.load(), 3);
  EXPECT_TRUE(server->spawn_after_trip_refused);
}

TEST(task_scope, cancelling_the_drain_cancels_every_sub_task_and_throws_operation_aborted) {
  asio::io_context io;
  auto w = std::make_shared<Waits>();
  asio::cancellation_signal sig;
  std::exception_ptr error;
  bool finished = false;
  pm::TaskScope scope(io.get_executor());
  for (int i = 0; i < 4; ++i) scope.spawn(until_cancelled(w));
  asio::co_spawn(io, scope.drain(std::chrono::nanoseconds::max(), std::chrono::nanoseconds::max()),
                 asio::bind_cancellation_slot(sig.slot(), [&](std::exception_ptr e, pm::DrainReport) {
                   error = e;
                   finished = true;
                 }));
  // Emitted until it lands: before the drain waits, an emission finds no
  // handler and is lost (the drain starts a hop or two after co_spawn).
  std::function<void()> emit = [&] {
    if (finished) return;
    sig.emit(asio::cancellation_type::terminal);
    asio::post(io, emit);
  };
  asio::post(io, emit);
  run_io(io);
  ASSERT_TRUE(finished);
  ASSERT_TRUE(error);
  try {
    std::rethrow_exception(error);
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(e.code(), asio::error::operation_aborted);
  }
  EXPECT_EQ(w->cancelled.load(), 4);
  EXPECT_EQ(scope.running(), 0u);
}

TEST(task_scope, a_scope_destroyed_first_cancels_what_runs_and_its_tasks_end_cleanly) {
  asio::io_context io;
  auto w = std::make_shared<Waits>();
  {
    pm::TaskScope scope(io.get_executor());
    for (int i = 0; i < 5; ++i) scope.spawn(until_cancelled(w));
    io.poll();
  }
  run_io(io);
  EXPECT_EQ(w->cancelled.load(), 5);
}

TEST(task_scope, an_io_context_destroyed_first_takes_its_tasks_with_it_and_the_scope_outlives_it) {
  auto w = std::make_shared<Waits>();
  auto io = std::make_unique<asio::io_context>();
  pm::TaskScope scope(io->get_executor());
  for (int i = 0; i < 5; ++i) scope.spawn(until_cancelled(w));
  scope.spawn(ignores_cancellation());
  io->poll();
  EXPECT_EQ(scope.running(), 6u);
  io.reset();
  EXPECT_EQ(scope.running(), 0u);
  EXPECT_EQ(w->cancelled.load(), 0);
  scope.cancel();  // nothing left to tell, and no executor to tell it through
}

TEST(task_scope, spawns_from_many_threads_onto_a_multi_threaded_io_context_are_all_counted_and_drained) {
  asio::io_context io(4);
  auto work = asio::make_work_guard(io);
  std::vector<std::thread> runners;
  for (int i = 0; i < 4; ++i) runners.emplace_back([&io] { io.run(); });
  auto done = std::make_shared<std::atomic<int>>(0);
  auto w = std::make_shared<Waits>();
  pm::TaskScope scope(io.get_executor(), {.name = "mt"});
  std::vector<std::thread> spawners;
  for (int t = 0; t < 4; ++t) {
    spawners.emplace_back([&, t] {
      for (int i = 0; i < 500; ++i) {
        if (i % 10 == 0) {
          scope.spawn(until_cancelled(w));
        } else {
          scope.spawn(hops(i % 5, done),
                      std::string("t").append(std::to_string(t)).append("-").append(std::to_string(i)));
        }
      }
    });
  }
  for (auto& t : spawners) t.join();
  auto fut = drain_from_outside(io, scope, 0s, std::chrono::nanoseconds::max());
  ASSERT_EQ(fut.wait_for(pm::test::hang_guard), std::future_status::ready);
  const auto report = fut.get();
  work.reset();
  for (auto& t : runners) t.join();
  EXPECT_EQ(scope.spawned(), 2000u);
  EXPECT_EQ(scope.running(), 0u);
  EXPECT_EQ(w->cancelled.load(), 200);
  // Every task ended by itself or was cancelled (a cancelled one ends by
  // operation_aborted, uncounted by `done`): none twice, none lost.
  EXPECT_LE(done->load() + w->cancelled.load(), 2000);
  EXPECT_GE(report.cancelled.size(), 200u);
  EXPECT_TRUE(report.abandoned.empty());
  EXPECT_EQ(report.finished + report.cancelled.size(), 2000u);
}

/// Waits with the throwing form of use_awaitable, as most code does.
asio::awaitable<void> waits_throwing() {
  asio::steady_timer t(co_await asio::this_coro::executor, asio::steady_timer::time_point::max());
  co_await t.async_wait(asio::use_awaitable);
}

TEST(task_scope, a_sub_task_ended_by_the_scopes_own_cancellation_is_not_a_failure) {
  for (const auto policy : {pm::TaskErrors::collect, pm::TaskErrors::fail_owner}) {
    asio::io_context io;
    pm::TaskScope scope(io.get_executor(), {.on_error = policy});
    scope.spawn(waits_throwing(), "a");
    scope.spawn(waits_throwing(), "b");
    std::exception_ptr error;
    std::optional<pm::DrainReport> report;
    asio::co_spawn(io, scope.drain(0s), [&](std::exception_ptr e, pm::DrainReport r) {
      error = e;
      report = std::move(r);
    });
    run_io(io);
    EXPECT_FALSE(error);
    ASSERT_TRUE(report);
    EXPECT_EQ(report->cancelled, (std::vector<std::string>{"a", "b"}));
    EXPECT_TRUE(report->failures.empty());
    EXPECT_EQ(scope.failed(), 0u);
  }
  // But operation_aborted that nobody in the scope asked for is a failure.
  asio::io_context io;
  pm::TaskScope scope(io.get_executor());
  scope.spawn([]() -> asio::awaitable<void> {
    co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    throw boost::system::system_error(asio::error::operation_aborted);
  }());
  io.run();
  EXPECT_EQ(scope.failed(), 1u);
}

TEST(task_scope, a_scope_destroyed_before_its_drain_first_runs_leaves_the_drain_whole) {
  asio::io_context io;
  auto scope = std::make_unique<pm::TaskScope>(io.get_executor());
  auto done = std::make_shared<std::atomic<int>>(0);
  scope->spawn(hops(3, done));
  std::optional<pm::DrainReport> report;
  asio::co_spawn(io, scope->drain(1min), [&](std::exception_ptr e, pm::DrainReport r) {
    EXPECT_FALSE(e);
    report = std::move(r);
  });
  scope.reset();  // the drain has not run a step yet
  run_io(io);
  ASSERT_TRUE(report);
  EXPECT_EQ(report->finished + report->cancelled.size(), 1u);
}

TEST(task_scope, under_fail_owner_the_drain_throws_the_first_failure_and_errors_keeps_them_all) {
  asio::io_context io;
  pm::TaskScope scope(io.get_executor(), {.on_error = pm::TaskErrors::fail_owner});
  scope.spawn(throws("one"), "a");
  scope.spawn(throws("two"), "b");
  scope.spawn(throws("three"), "c");
  std::exception_ptr error;
  asio::co_spawn(io, scope.drain(1min), [&](std::exception_ptr e, pm::DrainReport) { error = e; });
  run_io(io);
  ASSERT_TRUE(error);
  EXPECT_EQ(what(error), "one");
  EXPECT_EQ(scope.failed(), 3u);
  const auto kept = scope.errors();
  ASSERT_EQ(kept.size(), 3u);
  EXPECT_EQ(kept[2].name, "c");
}

TEST(task_scope, an_empty_executor_is_refused_with_an_error_naming_the_scope) {
  try {
    pm::TaskScope scope(asio::any_io_executor{}, {.name = "nowhere"});
    FAIL() << "an empty executor was taken";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'nowhere'"), std::string::npos) << e.what();
  }
  asio::io_context io;
  pm::TaskScope scope(io.get_executor(), {.name = "s"});
  EXPECT_THROW(scope.spawn(asio::any_io_executor{}, hops(1, std::make_shared<std::atomic<int>>(0))),
               std::invalid_argument);
  EXPECT_EQ(scope.spawned(), 0u);
}

TEST(task_scope, drain_closes_the_scope_when_called_not_when_first_awaited) {
  asio::io_context io;
  pm::TaskScope scope(io.get_executor());
  auto pending = scope.drain(0s);  // not awaited yet
  EXPECT_TRUE(scope.closed());
  EXPECT_THROW(scope.spawn(hops(1, std::make_shared<std::atomic<int>>(0))), pm::ScopeClosed);
}

/// A handle whose control() throws, as a user's own may.
struct ThrowingHandle : pm::ProcessControlHandler {
  void control(pm::RuntimeControlMessage) override { throw std::runtime_error("handle broken"); }
};

TEST(task_scope, an_owner_whose_handle_throws_still_gets_the_failure_from_drain) {
  asio::io_context io;
  auto w = std::make_shared<Waits>();
  pm::TaskScope scope(io.get_executor(),
                      {.on_error = pm::TaskErrors::fail_owner, .owner = std::make_shared<ThrowingHandle>()});
  scope.spawn(until_cancelled(w), "sibling");
  scope.spawn(throws("bad"), "culprit");
  std::exception_ptr error;
  asio::co_spawn(io, scope.drain(1min), [&](std::exception_ptr e, pm::DrainReport) { error = e; });
  run_io(io);
  ASSERT_TRUE(error);
  EXPECT_EQ(what(error), "bad");
  EXPECT_EQ(w->cancelled.load(), 1);
}

TEST(task_scope, a_cancel_racing_spawns_from_other_threads_reaches_every_task) {
  // A cancel that finds a task still being launched (its signal not yet
  // bound by co_spawn) must still reach it: else the drain below waits for
  // the abandon period and reports it abandoned.
  asio::io_context io(4);
  auto work = asio::make_work_guard(io);
  std::vector<std::thread> runners;
  for (int i = 0; i < 3; ++i) runners.emplace_back([&io] { io.run(); });
  for (int round = 0; round < 25; ++round) {
    SCOPED_TRACE(std::string("round ").append(std::to_string(round)));
    auto w = std::make_shared<Waits>();
    pm::TaskScope scope(io.get_executor());
    std::atomic<int> spawned{0};
    std::vector<std::thread> spawners;
    for (int t = 0; t < 2; ++t) {
      spawners.emplace_back([&] {
        try {
          // Bounded, so that a loaded machine does not pile up tasks; the
          // cancel below comes after 20, while these are still spawning.
          for (int i = 0; i < 400; ++i) {
            scope.spawn(until_cancelled(w));
            spawned.fetch_add(1);
          }
        } catch (const pm::ScopeClosed&) {
          // cancel() closed the scope: this spawner is done
        }
      });
    }
    while (spawned.load() < 20) std::this_thread::yield();
    scope.cancel();  // while the spawners are mid-spawn
    for (auto& t : spawners) t.join();
    auto fut = drain_from_outside(io, scope, 0s, 5s);
    ASSERT_EQ(fut.wait_for(pm::test::hang_guard), std::future_status::ready);
    const auto report = fut.get();
    ASSERT_TRUE(report.abandoned.empty()) << report.abandoned.size() << " task(s) never heard the cancellation";
    EXPECT_EQ(scope.running(), 0u);
    // Each one heard it, or was cancelled before it began and never ran.
    EXPECT_LE(w->cancelled.load(), spawned.load());
    EXPECT_EQ(report.finished + report.cancelled.size(), static_cast<std::size_t>(spawned.load()));
    EXPECT_EQ(scope.failed(), 0u) << "the scope's own cancellation is not a failure";
  }
  work.reset();
  for (auto& t : runners) t.join();
}

// A model: each task is one of finish (after k hops), throw (after one
// hop), or wait-until-cancelled. Drained with an unbounded grace when no
// task waits, with a zero grace otherwise; the report must say exactly what
// the model says.
TEST(task_scope, randomized_drains_report_what_a_model_predicts) {
  for (unsigned seed = 1; seed <= 60; ++seed) {
    SCOPED_TRACE(std::string("seed ").append(std::to_string(seed)));
    std::mt19937 rng(seed);
    const int n = static_cast<int>(rng() % 40);
    const bool with_waiters = rng() % 2 == 0;
    std::vector<int> kind(static_cast<std::size_t>(n));
    for (auto& k : kind) k = static_cast<int>(rng() % (with_waiters ? 3 : 2));
    std::set<std::string> throwers;
    std::set<std::string> waiters;
    for (int i = 0; i < n; ++i) {
      const std::string name = std::string("t").append(std::to_string(i));
      if (kind[static_cast<std::size_t>(i)] == 1) throwers.insert(name);
      if (kind[static_cast<std::size_t>(i)] == 2) waiters.insert(name);
    }
    asio::io_context io(2);
    auto w = std::make_shared<Waits>();
    auto done = std::make_shared<std::atomic<int>>(0);
    const auto report = run_coro(
        io,
        [](auto w, auto done, std::vector<int> kind, bool with_waiters,
           unsigned seed) -> asio::awaitable<pm::DrainReport> {
          const auto ex = co_await asio::this_coro::executor;  // not inside the next line: GCC PR 100611
          pm::TaskScope scope(ex, {.keep_errors = 1000});
          for (std::size_t i = 0; i < kind.size(); ++i) {
            const std::string name = std::string("t").append(std::to_string(i));
            if (kind[i] == 0) scope.spawn(hops(static_cast<int>((seed + i) % 4), done), name);
            if (kind[i] == 1) scope.spawn(throws(name + " broke"), name);
            if (kind[i] == 2) scope.spawn(until_cancelled(w), name);
          }
          co_return co_await scope.drain(with_waiters ? std::chrono::nanoseconds(0) : std::chrono::nanoseconds::max(),
                                         std::chrono::nanoseconds::max());
        }(w, done, kind, with_waiters, seed),
        2);
    std::set<std::string> failed;
    for (const auto& f : report.failures) {
      failed.insert(f.name);
      EXPECT_EQ(what(f.error), f.name + " broke");
    }
    EXPECT_EQ(failed, throwers);
    EXPECT_EQ(report.failures_dropped, 0u);
    EXPECT_TRUE(report.abandoned.empty());
    const std::set<std::string> cancelled(report.cancelled.begin(), report.cancelled.end());
    EXPECT_EQ(cancelled.size(), report.cancelled.size()) << "a name reported twice";
    // Every waiter was cancelled; others may have been too (zero grace).
    EXPECT_TRUE(std::includes(cancelled.begin(), cancelled.end(), waiters.begin(), waiters.end()));
    if (!with_waiters) {
      EXPECT_TRUE(cancelled.empty());
    }
    EXPECT_EQ(w->cancelled.load(), static_cast<int>(waiters.size()));
    EXPECT_EQ(report.finished + report.cancelled.size(), static_cast<std::size_t>(n));
  }
}

}  // namespace
