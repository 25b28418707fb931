// Adversarial tests of the core's waits (docs/supervision.md, Readiness):
// wait_ready(), shutdown() and reload() under cancellation of every kind,
// racing completion, on foreign io_contexts, and handles that throw.
#include <processmanager/builtin/blocking.hpp>
#include <processmanager/builtin/restart.hpp>
#include <processmanager/processmanager.hpp>

#include <gtest/gtest.h>

#include <boost/asio/experimental/awaitable_operators.hpp>

#include <deque>
#include <future>

#include "core_review_support.hpp"

namespace {

using namespace pm::test::lifecycle;
using namespace pm::test::review;

// ======================================================= 1. cancellable waits

TEST(core_review, wait_ready_cancellation_racing_readiness_on_two_threads) {
  auto j = std::make_shared<Journal>();
  auto anchor = std::make_shared<Probe>("anchor", j);  // an empty manager ends at once
  auto m = ProcessManagerBuilder().name("m").shutdown_grace_period(1h).pre_insert(anchor).build();
  Running run(m, 2);
  ASSERT_TRUE(run.wait_ready());
  auto strand = asio::make_strand(run.io());
  std::deque<asio::cancellation_signal> signals;
  std::vector<std::shared_ptr<Probe>> probes;
  int aborted = 0;
  int became_true = 0;
  constexpr int rounds = 300;
  for (int i = 0; i < rounds; ++i) {
    const std::string name = "p" + std::to_string(i);
    auto p = std::make_shared<Probe>(name, j, Behaviour{.defer_ready = true});
    probes.push_back(p);
    m->add(p);  // the manager is not ready until p is
    ASSERT_TRUE(j->wait_for("start " + name));
    auto& sig = signals.emplace_back();
    auto fut = spawn_wait(strand, sig, m->wait_ready(1h), j, "waiting " + name);
    ASSERT_TRUE(j->wait_for("waiting " + name));
    // Readiness from this thread, the cancellation on the waiter's strand
    // (run by the other io thread), at the same moment.
    std::thread readiness([p] { send(p, 1); });
    asio::post(strand, [&sig] { sig.emit(asio::cancellation_type::terminal); });
    readiness.join();
    ASSERT_EQ(fut.wait_for(pm::test::hang_guard), std::future_status::ready) << "round " << i;
    const auto r = fut.get();
    if (r == "aborted") {
      ++aborted;
    } else if (r == "true") {
      ++became_true;
    } else {
      ADD_FAILURE() << "round " << i << ": the wait ended with " << r;
    }
    ASSERT_TRUE(j->wait_for("ready " + name));
  }
  drain(strand);
  {
    auto core = core_of(*m);
    std::lock_guard lock(core->mu);
    EXPECT_TRUE(core->ready_waiters.empty()) << core->ready_waiters.size() << " waiters left listed";
  }
  EXPECT_EQ(aborted + became_true, rounds);
  RecordProperty("aborted", aborted);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);  // and no 1 h timer keeps the io_context busy
}

TEST(core_review, partial_and_total_cancellation_do_not_end_the_waits) {
  auto j = std::make_shared<Journal>();
  auto lazy = std::make_shared<Probe>("lazy", j, Behaviour{.defer_ready = true});
  auto stubborn = std::make_shared<Probe>("stubborn", j, Behaviour{.ignore_shutdown = true});
  auto m = ProcessManagerBuilder().name("m").shutdown_grace_period(1h).pre_insert(lazy).pre_insert(stubborn).build();
  Running run(m);
  ASSERT_TRUE(j->wait_for("start lazy"));
  ASSERT_TRUE(j->wait_for("start stubborn"));
  auto strand = asio::make_strand(run.io());

  asio::cancellation_signal s1;
  auto ready = spawn_wait(strand, s1, m->wait_ready(1h), j, "waiting ready", /*total_filter=*/true);
  ASSERT_TRUE(j->wait_for("waiting ready"));
  asio::post(strand, [&s1] { s1.emit(asio::cancellation_type::partial); });
  asio::post(strand, [&s1] { s1.emit(asio::cancellation_type::total); });
  drain(strand);
  EXPECT_EQ(ready.wait_for(0s), std::future_status::timeout) << "a non-terminal cancellation ended wait_ready";
  send(lazy, 1);
  ASSERT_EQ(ready.wait_for(pm::test::hang_guard), std::future_status::ready);
  EXPECT_EQ(ready.get(), "true");

  asio::cancellation_signal s2;
  auto stopped = spawn_wait(strand, s2, m->process_handle()->shutdown(), j, "waiting stop", true);
  ASSERT_TRUE(j->wait_for("stop stubborn"));
  asio::post(strand, [&s2] { s2.emit(asio::cancellation_type::partial | asio::cancellation_type::total); });
  drain(strand);
  EXPECT_EQ(stopped.wait_for(0s), std::future_status::timeout) << "a non-terminal cancellation ended shutdown()";
  send(stubborn, 3);
  ASSERT_EQ(stopped.wait_for(pm::test::hang_guard), std::future_status::ready);
  EXPECT_EQ(stopped.get(), "completed");
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(core_review, awaitable_operators_or_with_a_timer_leaves_no_timer_armed) {
  using namespace asio::experimental::awaitable_operators;
  auto j = std::make_shared<Journal>();
  auto lazy = std::make_shared<Probe>("lazy", j, Behaviour{.defer_ready = true});
  auto stubborn = std::make_shared<Probe>("stubborn", j, Behaviour{.ignore_shutdown = true});
  auto m = ProcessManagerBuilder().name("m").shutdown_grace_period(1h).pre_insert(lazy).pre_insert(stubborn).build();
  Running run(m);
  ASSERT_TRUE(j->wait_for("start lazy"));
  ASSERT_TRUE(j->wait_for("start stubborn"));

  asio::io_context foreign;
  auto which = asio::co_spawn(
      foreign,
      [m]() -> asio::awaitable<std::vector<int>> {
        std::vector<int> out;
        auto ex = co_await asio::this_coro::executor;
        for (int i = 0; i < 50; ++i) {
          asio::steady_timer t(ex, 1ms);
          auto r = co_await (m->wait_ready(1h) || t.async_wait(asio::use_awaitable));
          out.push_back(static_cast<int>(r.index()));
        }
        // The stop is asked for by the shutdown() that loses the race: it goes on.
        asio::steady_timer t(ex, 1ms);
        auto r = co_await (m->process_handle()->shutdown() || t.async_wait(asio::use_awaitable));
        out.push_back(static_cast<int>(r.index()));
        co_return out;
      },
      asio::use_future);
  // No 1 h timer may keep the foreign io_context busy: a short guard.
  pm::test::run_io(foreign, 1, 10s);
  auto idx = which.get();
  ASSERT_EQ(idx.size(), 51u);
  for (int v : idx) {
    EXPECT_EQ(v, 1);
  }
  ASSERT_TRUE(j->wait_for("stop stubborn"));
  {
    auto core = core_of(*m);
    std::lock_guard lock(core->mu);
    EXPECT_TRUE(core->ready_waiters.empty());
  }
  send(stubborn, 3);
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(core_review, waits_cancelled_on_a_foreign_io_context_destroyed_before_the_completion_runs) {
  auto j = std::make_shared<Journal>();
  auto lazy = std::make_shared<Probe>("lazy", j, Behaviour{.defer_ready = true});
  auto stubborn = std::make_shared<Probe>("stubborn", j, Behaviour{.ignore_shutdown = true});
  auto m = ProcessManagerBuilder().name("m").shutdown_grace_period(1h).pre_insert(lazy).pre_insert(stubborn).build();
  Running run(m);
  ASSERT_TRUE(j->wait_for("start lazy"));
  ASSERT_TRUE(j->wait_for("start stubborn"));
  for (int round = 0; round < 20; ++round) {
    asio::cancellation_signal s1, s2, s3;  // outlive the io_context
    asio::io_context foreign;
    std::atomic<int> suspended{0};
    auto spawn = [&](asio::cancellation_signal& s, auto make) {
      asio::co_spawn(
          foreign,
          [&suspended, make]() -> asio::awaitable<void> {
            ++suspended;
            co_await make();
          },
          asio::bind_cancellation_slot(s.slot(), asio::detached));
    };
    spawn(s1, [m]() -> asio::awaitable<void> { (void)co_await m->wait_ready(1h); });
    spawn(s2, [m]() -> asio::awaitable<void> { co_await m->process_handle()->reload(); });
    while (suspended.load() < 2) foreign.run_one();
    foreign.poll();
    s1.emit(asio::cancellation_type::terminal);
    s2.emit(asio::cancellation_type::terminal);
    if (round == 19) {
      spawn(s3, [m]() -> asio::awaitable<void> { co_await m->process_handle()->shutdown(); });
      while (suspended.load() < 3) foreign.run_one();
      foreign.poll();
      s3.emit(asio::cancellation_type::terminal);
    }
  }  // destroyed with the completions posted and unrun
  send(lazy, 1);
  ASSERT_TRUE(j->wait_for("stop stubborn"));
  send(stubborn, 3);
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(core_review, thousands_of_cancelled_waits_leave_nothing_listed) {
  auto j = std::make_shared<Journal>();
  auto lazy = std::make_shared<Probe>("lazy", j, Behaviour{.defer_ready = true});
  auto stubborn = std::make_shared<Probe>("stubborn", j, Behaviour{.ignore_shutdown = true});
  auto m = ProcessManagerBuilder().name("m").shutdown_grace_period(1h).pre_insert(lazy).pre_insert(stubborn).build();
  Running run(m);
  ASSERT_TRUE(j->wait_for("start lazy"));
  ASSERT_TRUE(j->wait_for("start stubborn"));
  auto core = core_of(*m);
  constexpr int n = 3000;
  auto cancel_many = [&](auto make) {
    std::deque<asio::cancellation_signal> sigs;
    asio::io_context foreign;
    // Without work a poll() that runs out of it stops the io_context.
    auto work = asio::make_work_guard(foreign);
    for (int i = 0; i < n; ++i) {
      auto& s = sigs.emplace_back();
      asio::co_spawn(foreign, make(), asio::bind_cancellation_slot(s.slot(), asio::detached));
      foreign.poll();  // suspended in the wait
      s.emit(asio::cancellation_type::terminal);
      foreign.poll();  // ended
    }
    work.reset();
    pm::test::run_io(foreign, 1, 10s);
  };
  cancel_many([m]() -> asio::awaitable<void> { (void)co_await m->wait_ready(1h); });
  {
    std::lock_guard lock(core->mu);
    EXPECT_EQ(core->ready_waiters.size(), 0u);
  }
  // A polling stop: "shutdown() or give up after a while", many times over
  // while a child holds the stop up.
  cancel_many([m]() -> asio::awaitable<void> { co_await m->process_handle()->shutdown(); });
  ASSERT_TRUE(j->wait_for("stop stubborn"));
  {
    std::lock_guard lock(core->mu);
    auto r = core->current.lock();
    ASSERT_TRUE(r);
    RecordProperty("stopped_waiters", static_cast<int>(r->stopped_waiters.size()));
    EXPECT_LE(r->stopped_waiters.size(), 16u)
        << "every cancelled shutdown() stays listed until the run ends: " << r->stopped_waiters.size();
  }
  send(stubborn, 3);
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(core_review, a_nested_managers_cancelled_shutdown_lets_its_stop_go_on) {
  auto j = std::make_shared<Journal>();
  auto stubborn = std::make_shared<Probe>("stubborn", j, Behaviour{.ignore_shutdown = true});
  auto keeper = std::make_shared<Probe>("keeper", j);
  auto inner = ProcessManagerBuilder().name("inner").shutdown_grace_period(1h).pre_insert(stubborn).build();
  auto root =
      ProcessManagerBuilder().name("root").shutdown_grace_period(1h).pre_insert(inner).pre_insert(keeper).build();
  Running run(root);
  ASSERT_TRUE(run.wait_ready());
  auto strand = asio::make_strand(run.io());
  asio::cancellation_signal s;
  auto f = spawn_wait(strand, s, inner->process_handle()->shutdown(), j, "waiting inner");
  ASSERT_TRUE(j->wait_for("stop stubborn"));
  asio::post(strand, [&s] { s.emit(asio::cancellation_type::terminal); });
  ASSERT_EQ(f.wait_for(pm::test::hang_guard), std::future_status::ready);
  EXPECT_EQ(f.get(), "aborted");
  EXPECT_EQ(j->count("stop keeper"), 0u) << "only inner was asked to stop";
  EXPECT_FALSE(inner->is_ready());
  // The root's own shutdown, cancelled too, while inner holds it up.
  asio::cancellation_signal s2;
  auto f2 = spawn_wait(strand, s2, root->process_handle()->shutdown(), j, "waiting root");
  ASSERT_TRUE(j->wait_for("stop keeper"));
  asio::post(strand, [&s2] { s2.emit(asio::cancellation_type::terminal); });
  ASSERT_EQ(f2.wait_for(pm::test::hang_guard), std::future_status::ready);
  EXPECT_EQ(f2.get(), "aborted");
  EXPECT_FALSE(root->is_ready());
  send(stubborn, 3);
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(core_review, wait_ready_extreme_timeouts) {
  auto j = std::make_shared<Journal>();
  auto p = std::make_shared<Probe>("p", j);
  auto lazy = std::make_shared<Probe>("lazy", j, Behaviour{.defer_ready = true});
  auto m = ProcessManagerBuilder().name("m").pre_insert(p).pre_insert(lazy).build();
  Running run(m);
  ASSERT_TRUE(j->wait_for("start lazy"));
  EXPECT_FALSE(run.wait_ready(0ns));
  EXPECT_FALSE(run.wait_ready(std::chrono::nanoseconds::min()));
  EXPECT_FALSE(run.wait_ready(-1h));
  auto forever = asio::co_spawn(run.io(), m->wait_ready(std::chrono::nanoseconds::max()), asio::use_future);
  EXPECT_EQ(forever.wait_for(20ms), std::future_status::timeout) << "max() must mean forever";
  send(lazy, 1);
  EXPECT_TRUE(forever.get());
  EXPECT_TRUE(run.wait_ready(0ns));
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(core_review, cancellation_emitted_before_the_wait_is_registered) {
  auto j = std::make_shared<Journal>();
  auto lazy = std::make_shared<Probe>("lazy", j, Behaviour{.defer_ready = true});
  auto m = ProcessManagerBuilder().name("m").pre_insert(lazy).build();
  Running run(m);
  ASSERT_TRUE(j->wait_for("start lazy"));
  for (bool throw_if_cancelled : {true, false}) {
    asio::cancellation_signal s;
    asio::io_context foreign;
    auto f = asio::co_spawn(
        foreign,
        [m, throw_if_cancelled]() -> asio::awaitable<std::string> {
          co_await asio::this_coro::throw_if_cancelled(throw_if_cancelled);
          co_return co_await outcome(m->wait_ready(1h));
        },
        asio::bind_cancellation_slot(s.slot(), asio::use_future));
    s.emit(asio::cancellation_type::terminal);  // before the coroutine has run at all
    pm::test::run_io(foreign, 1, 5s);           // a wait armed for an hour fails the guard
    ASSERT_EQ(f.wait_for(0s), std::future_status::ready) << "throw_if_cancelled=" << throw_if_cancelled;
    EXPECT_EQ(f.get(), "aborted") << "throw_if_cancelled=" << throw_if_cancelled;
  }
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

class ThrowingReloadHandle final : public pm::ProcessControlHandler {
 public:
  explicit ThrowingReloadHandle(std::shared_ptr<pm::ProcessControlHandler> inner) : inner_(std::move(inner)) {}
  void control(pm::RuntimeControlMessage msg) override { inner_->control(std::move(msg)); }
  bool watch_readiness(std::function<void(bool)> fn) override { return inner_->watch_readiness(std::move(fn)); }
  // Not a coroutine: throws before it returns one.
  asio::awaitable<void> reload() override { throw std::runtime_error("reload() threw"); }

 private:
  std::shared_ptr<pm::ProcessControlHandler> inner_;
};

class ThrowingReloader : public pm::Runnable {
 public:
  ThrowingReloader(std::string name, std::shared_ptr<Journal> j)
      : probe_(std::move(name), std::move(j)),
        handle_(std::make_shared<ThrowingReloadHandle>(probe_.process_handle())) {}
  asio::awaitable<void> process_start() override { return probe_.process_start(); }
  std::string process_name() const override { return probe_.process_name(); }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return handle_; }

 private:
  Probe probe_;
  std::shared_ptr<ThrowingReloadHandle> handle_;
};

TEST(core_review, a_handle_whose_reload_throws_before_its_coroutine_exists) {
  auto j = std::make_shared<Journal>();
  auto r = std::make_shared<ThrowingReloader>("r", j);
  auto ok = std::make_shared<Probe>("ok", j);
  auto m = ProcessManagerBuilder().name("m").pre_insert(r).pre_insert(ok).build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  asio::io_context caller;
  std::string got = "not finished";
  std::string escaped;
  asio::co_spawn(caller, outcome(m->process_handle()->reload()),
                 [&got](const std::exception_ptr&, std::string r) { got = std::move(r); });
  try {
    caller.run_for(5s);  // not run_io: its watchdog thread would terminate the test on an escaping exception
  } catch (const std::exception& e) {
    escaped = e.what();
  }
  EXPECT_EQ(escaped, "") << "the handle's exception escaped the caller's io_context::run()";
  EXPECT_NE(got, "not finished") << "the reload() never completed";
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

}  // namespace
