// ChildOptions::stop_last: told to stop only once every other child has
// ended, its timeout running from then, under every order and every way a
// stop begins (written as an adversary would, against the docs).
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "stop_support.hpp"

namespace {

using namespace pm::test::stops;

// ---------------------------------------------------------------------------
// 1. stop_last

/// `last` at `pos` among two others that take a while to stop.
void stop_last_is_told_after_the_others(StartOrder order, int pos) {
  SCOPED_TRACE("position " + std::to_string(pos));
  auto j = std::make_shared<Journal>();
  auto last = std::make_shared<Svc>("last", j);
  std::vector<std::shared_ptr<Svc>> others{std::make_shared<Svc>("a", j, SvcOpts{.linger = 80ms}),
                                           std::make_shared<Svc>("b", j, SvcOpts{.linger = 120ms})};
  ProcessManagerBuilder bld;
  bld.name("m").start_order(order).shutdown_grace_period(10s);
  std::vector<std::string> inserted;
  for (int i = 0, o = 0; i < 3; ++i) {
    if (i == pos) {
      bld.pre_insert(last, last_opts());
      inserted.push_back("last");
    } else {
      bld.pre_insert(others[static_cast<std::size_t>(o)]);
      inserted.push_back(o == 0 ? "a" : "b");
      ++o;
    }
  }
  auto m = bld.build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  const auto lines = j->lines();
  ASSERT_GE(idx(lines, "stop last"), 0) << joined(lines);
  EXPECT_GT(idx(lines, "stop last"), idx(lines, "end a")) << joined(lines);
  EXPECT_GT(idx(lines, "stop last"), idx(lines, "end b")) << joined(lines);
  if (order == StartOrder::sequential) {
    // The others in reverse insertion order, each waited for.
    std::vector<std::string> rev;
    for (auto it = inserted.rbegin(); it != inserted.rend(); ++it) {
      if (*it != "last") rev.push_back(*it);
    }
    EXPECT_GT(idx(lines, "stop " + rev[1]), idx(lines, "end " + rev[0])) << joined(lines);
  }
}

TEST(stop_last, stop_last_concurrent_any_position) {
  for (int pos = 0; pos < 3; ++pos) stop_last_is_told_after_the_others(StartOrder::concurrent, pos);
}

TEST(stop_last, stop_last_sequential_any_position) {
  for (int pos = 0; pos < 3; ++pos) stop_last_is_told_after_the_others(StartOrder::sequential, pos);
}

TEST(stop_last, several_stop_last_concurrent_told_together_after_the_rest) {
  auto j = std::make_shared<Journal>();
  auto l1 = std::make_shared<Svc>("l1", j, SvcOpts{.linger = 100ms});
  auto l2 = std::make_shared<Svc>("l2", j, SvcOpts{.linger = 100ms});
  auto s = std::make_shared<Svc>("s", j, SvcOpts{.linger = 100ms});
  auto m =
      ProcessManagerBuilder().name("m").pre_insert(l1, last_opts()).pre_insert(s).pre_insert(l2, last_opts()).build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  const auto lines = j->lines();
  EXPECT_GT(idx(lines, "stop l1"), idx(lines, "end s")) << joined(lines);
  EXPECT_GT(idx(lines, "stop l2"), idx(lines, "end s")) << joined(lines);
  // Together: neither waits for the other's end.
  EXPECT_LT(idx(lines, "stop l1"), idx(lines, "end l2")) << joined(lines);
  EXPECT_LT(idx(lines, "stop l2"), idx(lines, "end l1")) << joined(lines);
}

TEST(stop_last, several_stop_last_sequential_told_in_reverse_order) {
  auto j = std::make_shared<Journal>();
  auto l1 = std::make_shared<Svc>("l1", j, SvcOpts{.linger = 50ms});
  auto l2 = std::make_shared<Svc>("l2", j, SvcOpts{.linger = 50ms});
  auto s = std::make_shared<Svc>("s", j, SvcOpts{.linger = 50ms});
  auto m = ProcessManagerBuilder()
               .name("m")
               .start_order(StartOrder::sequential)
               .pre_insert(l1, last_opts())
               .pre_insert(s)
               .pre_insert(l2, last_opts())
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  const auto lines = j->lines();
  EXPECT_GT(idx(lines, "stop l2"), idx(lines, "end s")) << joined(lines);
  EXPECT_GT(idx(lines, "stop l1"), idx(lines, "end l2")) << joined(lines);
}

TEST(stop_last, all_children_stop_last_concurrent_and_sequential) {
  for (auto order : {StartOrder::concurrent, StartOrder::sequential}) {
    auto j = std::make_shared<Journal>();
    auto a = std::make_shared<Svc>("a", j, SvcOpts{.linger = 50ms});
    auto b = std::make_shared<Svc>("b", j, SvcOpts{.linger = 50ms});
    auto m = ProcessManagerBuilder()
                 .name("m")
                 .start_order(order)
                 .pre_insert(a, last_opts())
                 .pre_insert(b, last_opts())
                 .build();
    Running run(m);
    ASSERT_TRUE(run.wait_ready());
    run.stop();
    EXPECT_EQ(run.finish(), nullptr);
    const auto lines = j->lines();
    if (order == StartOrder::sequential) {
      EXPECT_GT(idx(lines, "stop a"), idx(lines, "end b")) << joined(lines);
    } else {
      EXPECT_LT(idx(lines, "stop a"), idx(lines, "end b")) << joined(lines);
      EXPECT_LT(idx(lines, "stop b"), idx(lines, "end a")) << joined(lines);
    }
  }
}

TEST(stop_last, stop_last_after_a_failure) {
  for (auto order : {StartOrder::concurrent, StartOrder::sequential}) {
    auto j = std::make_shared<Journal>();
    auto last = std::make_shared<Svc>("last", j);
    auto bad = std::make_shared<Svc>("bad", j);
    auto slow = std::make_shared<Svc>("slow", j, SvcOpts{.linger = 100ms});
    auto m = ProcessManagerBuilder()
                 .name("m")
                 .start_order(order)
                 .pre_insert(slow)
                 .pre_insert(last, last_opts())
                 .pre_insert(bad)
                 .build();
    Running run(m);
    ASSERT_TRUE(run.wait_ready());
    send(bad, 2);
    auto pe = process_error(run.finish());
    ASSERT_TRUE(pe);
    EXPECT_EQ(pe->process_name(), "m/bad");
    EXPECT_TRUE(pe->not_stopped().empty());
    const auto lines = j->lines();
    EXPECT_GT(idx(lines, "stop last"), idx(lines, "end slow")) << joined(lines);
  }
}

TEST(stop_last, stop_last_after_a_significant_childs_end) {
  for (auto order : {StartOrder::concurrent, StartOrder::sequential}) {
    auto j = std::make_shared<Journal>();
    auto last = std::make_shared<Svc>("last", j);
    auto sig = std::make_shared<Svc>("sig", j);
    auto slow = std::make_shared<Svc>("slow", j, SvcOpts{.linger = 100ms});
    auto m = ProcessManagerBuilder()
                 .name("m")
                 .start_order(order)
                 .pre_insert(last, last_opts())
                 .pre_insert(slow)
                 .pre_insert(sig, ChildOptions{.significant = true})
                 .build();
    Running run(m);
    ASSERT_TRUE(run.wait_ready());
    send(sig, 3);
    EXPECT_EQ(run.finish(), nullptr);
    const auto lines = j->lines();
    EXPECT_GT(idx(lines, "stop last"), idx(lines, "end slow")) << joined(lines);
  }
}

/// Never ready: its start timeout fails the manager.
class NeverReady : public pm::Runnable {
 public:
  NeverReady(std::string name, std::shared_ptr<Journal> j) : name_(std::move(name)), j_(std::move(j)), guard_(name_) {}
  asio::awaitable<void> process_start() override {
    guard_.defer_readiness();
    auto ticker = co_await guard_.runtime_ticker();
    for (;;) {
      if ((co_await ticker.next_control()).is_shutdown()) break;
    }
    asio::steady_timer t(co_await asio::this_coro::executor, 80ms);
    co_await t.async_wait(asio::use_awaitable);
    j_->add("end " + name_);
  }
  std::string process_name() const override { return name_; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard_.handle(); }

 private:
  std::string name_;
  std::shared_ptr<Journal> j_;
  pm::RuntimeGuard guard_;
};

TEST(stop_last, stop_last_after_a_start_timeout) {
  for (auto order : {StartOrder::concurrent, StartOrder::sequential}) {
    auto j = std::make_shared<Journal>();
    auto last = std::make_shared<Svc>("last", j);
    auto late = std::make_shared<NeverReady>("late", j);
    auto m = ProcessManagerBuilder()
                 .name("m")
                 .start_order(order)
                 .pre_insert(last, last_opts())
                 .pre_insert(late, ChildOptions{.start_timeout = 50ms})
                 .build();
    Running run(m);
    auto pe = process_error(run.finish());
    ASSERT_TRUE(pe);
    EXPECT_EQ(pe->process_name(), "m/late");
    const auto lines = j->lines();
    EXPECT_GT(idx(lines, "stop last"), idx(lines, "end late")) << joined(lines);
  }
}

TEST(stop_last, stop_last_that_ends_on_its_own_during_the_stop) {
  auto j = std::make_shared<Journal>();
  auto last = std::make_shared<Svc>("last", j);
  auto slow = std::make_shared<Svc>("slow", j, SvcOpts{.linger = 300ms});
  auto m = ProcessManagerBuilder().name("m").pre_insert(last, last_opts()).pre_insert(slow).build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  run.stop();
  ASSERT_TRUE(j->wait_for("stop slow"));
  send(last, 3);
  ASSERT_TRUE(j->wait_for("end last"));
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(j->count("stop last"), 0u) << joined(j->lines());
}

TEST(stop_last, stop_last_ignoring_its_stop_is_cancelled_at_its_own_timeout_from_when_told) {
  auto j = std::make_shared<Journal>();
  auto last = std::make_shared<Svc>("last", j, SvcOpts{.ignore_stop = true});
  auto slow = std::make_shared<Svc>("slow", j, SvcOpts{.linger = 250ms});
  auto m = ProcessManagerBuilder()
               .name("m")
               .shutdown_grace_period(10s)
               .pre_insert(last, ChildOptions{.shutdown_timeout = 100ms, .stop_last = true})
               .pre_insert(slow)
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  const auto t0 = Clock::now();
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  const auto told = last->when("stop");
  const auto cancelled = last->when("cancelled");
  const auto slow_end = slow->when("end");
  ASSERT_TRUE(told && cancelled && slow_end) << joined(j->lines());
  EXPECT_GE(*told, *slow_end);
  EXPECT_GE(*cancelled - *told, 95ms);
  EXPECT_LT(*cancelled - *told, 2s);
  EXPECT_GE(*slow_end - t0, 240ms);  // the others' grace was not cut short
}

TEST(stop_last, stop_last_gets_the_whole_grace_from_when_it_is_told) {
  for (auto order : {StartOrder::concurrent, StartOrder::sequential}) {
    auto j = std::make_shared<Journal>();
    auto last = std::make_shared<Svc>("last", j, SvcOpts{.linger = 120ms});
    auto stuck = std::make_shared<Svc>("stuck", j, SvcOpts{.ignore_stop = true});
    auto m = ProcessManagerBuilder()
                 .name("m")
                 .start_order(order)
                 .shutdown_grace_period(150ms)
                 .pre_insert(last, last_opts())
                 .pre_insert(stuck)
                 .build();
    Running run(m);
    ASSERT_TRUE(run.wait_ready());
    run.stop();
    (void)run.finish();
    EXPECT_EQ(j->count("cancelled stuck"), 1u) << joined(j->lines());
    EXPECT_EQ(j->count("end last"), 1u) << "last was cancelled for the others' grace: " << joined(j->lines());
    EXPECT_EQ(j->count("cancelled last"), 0u) << joined(j->lines());
  }
}

TEST(stop_last, stop_last_ignoring_cancellation_is_abandoned_and_the_manager_completes) {
  auto j = std::make_shared<Journal>();
  EventRecorder rec;
  auto last = std::make_shared<Svc>("last", j, SvcOpts{.ignore_stop = true, .ignore_cancel = true});
  auto slow = std::make_shared<Svc>("slow", j, SvcOpts{.linger = 100ms});
  auto m = ProcessManagerBuilder()
               .name("m")
               .shutdown_grace_period(10s)
               .abandon_timeout(100ms)
               .on_event(rec.hook())
               .pre_insert(last, ChildOptions{.shutdown_timeout = 50ms, .stop_last = true})
               .pre_insert(slow)
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  const auto events = rec.events();
  EXPECT_GE(event_index(events, "m/last", EventKind::abandoned), 0);
  const auto told = last->when("stop");
  const auto cancelled = last->when("cancelled");
  ASSERT_TRUE(told && cancelled);
  EXPECT_GE(*cancelled - *told, 45ms);
}

TEST(stop_last, stop_last_is_told_once_the_others_are_abandoned) {
  for (auto order : {StartOrder::concurrent, StartOrder::sequential}) {
    auto j = std::make_shared<Journal>();
    EventRecorder rec;
    auto last = std::make_shared<Svc>("last", j);
    auto stuck = std::make_shared<Svc>("stuck", j, SvcOpts{.ignore_stop = true, .ignore_cancel = true});
    auto m = ProcessManagerBuilder()
                 .name("m")
                 .start_order(order)
                 .shutdown_grace_period(10s)
                 .abandon_timeout(60ms)
                 .on_event(rec.hook())
                 .pre_insert(last, last_opts())
                 .pre_insert(stuck, ChildOptions{.shutdown_timeout = 40ms})
                 .build();
    Running run(m);
    ASSERT_TRUE(run.wait_ready());
    run.stop();
    EXPECT_EQ(run.finish(), nullptr);
    const auto events = rec.events();
    const auto abandoned = event_index(events, "m/stuck", EventKind::abandoned);
    const auto told = event_index(events, "m/last", EventKind::state, ChildState::stopping);
    EXPECT_GE(abandoned, 0);
    EXPECT_GT(told, abandoned);
    EXPECT_EQ(j->count("stop last"), 1u);
  }
}

TEST(stop_last, nested_manager_that_stops_last_in_its_parent) {
  auto j = std::make_shared<Journal>();
  auto inner_child = std::make_shared<Svc>("c", j);
  auto inner = ProcessManagerBuilder().name("n").pre_insert(inner_child).build();
  auto slow = std::make_shared<Svc>("slow", j, SvcOpts{.linger = 100ms});
  auto m = ProcessManagerBuilder().name("m").pre_insert(inner, last_opts()).pre_insert(slow).build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  const auto lines = j->lines();
  EXPECT_GT(idx(lines, "stop c"), idx(lines, "end slow")) << joined(lines);
}

TEST(stop_last, stop_last_inside_a_nested_manager) {
  auto j = std::make_shared<Journal>();
  auto last = std::make_shared<Svc>("last", j);
  auto slow = std::make_shared<Svc>("slow", j, SvcOpts{.linger = 100ms});
  auto inner = ProcessManagerBuilder().name("n").pre_insert(last, last_opts()).pre_insert(slow).build();
  auto m = ProcessManagerBuilder().name("m").pre_insert(inner).pre_insert(std::make_shared<Svc>("x", j)).build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  const auto lines = j->lines();
  EXPECT_GT(idx(lines, "stop last"), idx(lines, "end slow")) << joined(lines);
}

TEST(stop_last, stop_last_added_while_the_manager_stops_waits_for_the_others) {
  auto j = std::make_shared<Journal>();
  auto slow = std::make_shared<Svc>("slow", j, SvcOpts{.linger = 200ms});
  auto m = ProcessManagerBuilder().name("m").pre_insert(slow).build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  run.stop();
  ASSERT_TRUE(j->wait_for("stop slow"));
  auto last = std::make_shared<Svc>("last", j);
  m->add(last, last_opts());
  EXPECT_EQ(run.finish(), nullptr);
  const auto lines = j->lines();
  ASSERT_GE(idx(lines, "stop last"), 0) << joined(lines);
  EXPECT_GT(idx(lines, "stop last"), idx(lines, "end slow")) << joined(lines);
}

TEST(stop_last, stop_last_added_to_a_stopping_sequential_manager_waits_for_the_others) {
  auto j = std::make_shared<Journal>();
  auto s1 = std::make_shared<Svc>("s1", j, SvcOpts{.linger = 100ms});
  auto s2 = std::make_shared<Svc>("s2", j, SvcOpts{.linger = 100ms});
  auto m = ProcessManagerBuilder().name("m").start_order(StartOrder::sequential).pre_insert(s1).pre_insert(s2).build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  run.stop();
  ASSERT_TRUE(j->wait_for("stop s2"));
  auto last = std::make_shared<Svc>("last", j);
  m->add(last, last_opts());
  EXPECT_EQ(run.finish(), nullptr);
  const auto lines = j->lines();
  ASSERT_GE(idx(lines, "stop last"), 0) << joined(lines);
  EXPECT_GT(idx(lines, "stop last"), idx(lines, "end s1")) << joined(lines);
}

TEST(stop_last, stop_last_when_a_sequential_start_is_cut_short) {
  auto j = std::make_shared<Journal>();
  auto last = std::make_shared<Svc>("last", j);
  auto late = std::make_shared<NeverReady>("late", j);
  auto never = std::make_shared<Svc>("never", j);
  auto m = ProcessManagerBuilder()
               .name("m")
               .start_order(StartOrder::sequential)
               .pre_insert(last, last_opts())
               .pre_insert(late)
               .pre_insert(never)
               .build();
  Running run(m);
  ASSERT_TRUE(j->wait_for("start last"));
  ASSERT_TRUE(m->wait_ready_blocking(100ms) == false);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  const auto lines = j->lines();
  EXPECT_EQ(idx(lines, "start never"), -1) << joined(lines);
  EXPECT_GT(idx(lines, "stop last"), idx(lines, "end late")) << joined(lines);
}

// A stop sent before the run (kept for it): the run begins stopping, and
// its stop_last child must still be told last.
TEST(stop_last, stop_last_when_the_stop_was_sent_before_the_run) {
  auto j = std::make_shared<Journal>();
  auto last = std::make_shared<Svc>("last", j);
  auto slow = std::make_shared<Svc>("slow", j, SvcOpts{.linger = 150ms});
  auto m = ProcessManagerBuilder().name("m").pre_insert(last, last_opts()).pre_insert(slow).build();
  m->process_handle()->request_shutdown();
  Running run(m);
  EXPECT_EQ(run.finish(), nullptr);
  const auto lines = j->lines();
  ASSERT_GE(idx(lines, "stop last"), 0) << joined(lines);
  EXPECT_GT(idx(lines, "stop last"), idx(lines, "end slow")) << joined(lines);
}

// The same through the ordinary path: a nested manager added to a parent
// that is stopping is told at once (before it starts), so its run begins
// stopping; its own stop_last child must still be told last.
TEST(stop_last, stop_last_inside_a_nested_manager_added_while_the_parent_stops) {
  auto j = std::make_shared<Journal>();
  auto parent_slow = std::make_shared<Svc>("pslow", j, SvcOpts{.linger = 400ms});
  auto m = ProcessManagerBuilder().name("m").pre_insert(parent_slow).build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  run.stop();
  ASSERT_TRUE(j->wait_for("stop pslow"));
  auto last = std::make_shared<Svc>("last", j);
  auto slow = std::make_shared<Svc>("slow", j, SvcOpts{.linger = 150ms});
  auto inner = ProcessManagerBuilder().name("n").pre_insert(last, last_opts()).pre_insert(slow).build();
  m->add(inner);
  EXPECT_EQ(run.finish(), nullptr);
  const auto lines = j->lines();
  ASSERT_GE(idx(lines, "stop last"), 0) << joined(lines);
  EXPECT_GT(idx(lines, "stop last"), idx(lines, "end slow")) << joined(lines);
}

TEST(stop_last, stop_last_member_of_a_one_for_all_group_is_told_with_the_group) {
  auto j = std::make_shared<Journal>();
  auto a = std::make_shared<Svc>("a", j);
  auto last = std::make_shared<Svc>("last", j);
  auto b = std::make_shared<Svc>("b", j, SvcOpts{.linger = 300ms});
  auto m = ProcessManagerBuilder()
               .name("m")
               .strategy(Strategy::one_for_all)
               .intensity(10, 10s)
               .pre_insert(a, ChildOptions{.restart = no_backoff()})
               .pre_insert(last, ChildOptions{.restart = no_backoff(), .stop_last = true})
               .pre_insert(b, ChildOptions{.restart = no_backoff()})
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  send(a, 2);
  ASSERT_TRUE(j->wait_for("start last", 2));
  ASSERT_TRUE(j->wait_for("start b", 2));
  ASSERT_TRUE(run.wait_ready());
  const auto lines = j->lines();
  EXPECT_LT(idx(lines, "stop last"), idx(lines, "end b")) << joined(lines);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  const auto all = j->lines();
  // The manager's own stop afterwards: last told after b's second end.
  std::ptrdiff_t last_stop = -1, b_end = -1;
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (all[i] == "stop last") last_stop = static_cast<std::ptrdiff_t>(i);
    if (all[i] == "end b") b_end = static_cast<std::ptrdiff_t>(i);
  }
  EXPECT_GT(last_stop, b_end) << joined(all);
}

// A stop_last member told by its group's stop, then by the manager's stop:
// its own timeout still runs from when it was (first) told.
TEST(stop_last, stop_last_group_member_timeout_runs_from_when_it_was_told) {
  auto j = std::make_shared<Journal>();
  auto a = std::make_shared<Svc>("a", j);
  auto last = std::make_shared<Svc>("last", j, SvcOpts{.ignore_stop = true});
  auto m = ProcessManagerBuilder()
               .name("m")
               .strategy(Strategy::one_for_all)
               .intensity(10, 10s)
               .shutdown_grace_period(10s)
               .pre_insert(a, ChildOptions{.restart = no_backoff()})
               .pre_insert(last, ChildOptions{.restart = no_backoff(), .shutdown_timeout = 1s, .stop_last = true})
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  send(a, 2);
  ASSERT_TRUE(j->wait_for("stop last"));
  std::this_thread::sleep_for(600ms);  // scenario pacing: the manager's stop comes well inside last's timeout
  run.stop();
  (void)run.finish();
  const auto told = last->when("stop");
  const auto cancelled = last->when("cancelled");
  ASSERT_TRUE(told && cancelled) << joined(j->lines());
  EXPECT_GE(*cancelled - *told, 995ms);
  // Restarted by the manager's stop, it would be 1.6 s.
  EXPECT_LT(*cancelled - *told, 1450ms)
      << "cancelled " << std::chrono::duration_cast<std::chrono::milliseconds>(*cancelled - *told).count()
      << " ms after it was told, not at its 1 s shutdown_timeout";
}

// The same for an ordinary member: told by its group's stop, its timeout
// must not start again when the manager's stop fans out.
TEST(stop_last, group_member_timeout_runs_from_when_it_was_told) {
  auto j = std::make_shared<Journal>();
  auto a = std::make_shared<Svc>("a", j);
  auto b = std::make_shared<Svc>("b", j, SvcOpts{.ignore_stop = true});
  auto m = ProcessManagerBuilder()
               .name("m")
               .strategy(Strategy::one_for_all)
               .intensity(10, 10s)
               .shutdown_grace_period(10s)
               .pre_insert(a, ChildOptions{.restart = no_backoff()})
               .pre_insert(b, ChildOptions{.restart = no_backoff(), .shutdown_timeout = 1s})
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  send(a, 2);
  ASSERT_TRUE(j->wait_for("stop b"));
  std::this_thread::sleep_for(600ms);  // scenario pacing: the manager's stop comes well inside b's timeout
  run.stop();
  (void)run.finish();
  const auto told = b->when("stop");
  const auto cancelled = b->when("cancelled");
  ASSERT_TRUE(told && cancelled) << joined(j->lines());
  EXPECT_LT(*cancelled - *told, 1450ms)
      << "cancelled " << std::chrono::duration_cast<std::chrono::milliseconds>(*cancelled - *told).count()
      << " ms after it was told, not at its 1 s shutdown_timeout";
}

TEST(stop_last, stop_last_abandoned_in_a_failing_tree_is_named_once) {
  auto j = std::make_shared<Journal>();
  auto last = std::make_shared<Svc>("last", j, SvcOpts{.ignore_stop = true, .ignore_cancel = true});
  auto bad = std::make_shared<Svc>("bad", j);
  auto m = ProcessManagerBuilder()
               .name("m")
               .abandon_timeout(50ms)
               .pre_insert(last, ChildOptions{.shutdown_timeout = 50ms, .stop_last = true})
               .pre_insert(bad)
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  send(bad, 2);
  auto pe = process_error(run.finish());
  ASSERT_TRUE(pe);
  EXPECT_EQ(pe->process_name(), "m/bad");
  EXPECT_EQ(pe->not_stopped(), std::vector<std::string>{"m/last"});
}

TEST(stop_last, stop_last_child_that_misses_its_own_start_timeout) {
  auto j = std::make_shared<Journal>();
  auto late = std::make_shared<NeverReady>("late", j);
  auto slow = std::make_shared<Svc>("slow", j, SvcOpts{.linger = 80ms});
  auto m = ProcessManagerBuilder()
               .name("m")
               .pre_insert(late, ChildOptions{.start_timeout = 50ms, .stop_last = true})
               .pre_insert(slow)
               .build();
  Running run(m);
  auto pe = process_error(run.finish());
  ASSERT_TRUE(pe);
  EXPECT_EQ(pe->process_name(), "m/late");
  const auto lines = j->lines();
  EXPECT_GT(idx(lines, "end late"), idx(lines, "end slow")) << joined(lines);
}

// A failing tree whose stop_last child ignores its stop: not_stopped names it.
TEST(stop_last, stop_last_not_stopped_is_reported) {
  auto j = std::make_shared<Journal>();
  auto last = std::make_shared<Svc>("last", j, SvcOpts{.ignore_stop = true});
  auto bad = std::make_shared<Svc>("bad", j);
  auto slow = std::make_shared<Svc>("slow", j, SvcOpts{.linger = 50ms});
  auto m = ProcessManagerBuilder()
               .name("m")
               .pre_insert(last, ChildOptions{.shutdown_timeout = 50ms, .stop_last = true})
               .pre_insert(slow)
               .pre_insert(bad)
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  send(bad, 2);
  auto pe = process_error(run.finish());
  ASSERT_TRUE(pe);
  EXPECT_EQ(pe->process_name(), "m/bad");
  EXPECT_EQ(pe->failures().size(), 1u);
  EXPECT_EQ(pe->not_stopped(), std::vector<std::string>{"m/last"});
  const auto lines = j->lines();
  EXPECT_GT(idx(lines, "stop last"), idx(lines, "end slow")) << joined(lines);
}

// The manager stops while a one_for_all group (with a stop_last member) is
// stopping: no hang, and it completes.
TEST(stop_last, manager_stop_during_a_group_stop_with_a_stop_last_member) {
  auto j = std::make_shared<Journal>();
  auto a = std::make_shared<Svc>("a", j);
  auto last = std::make_shared<Svc>("last", j, SvcOpts{.linger = 100ms});
  auto b = std::make_shared<Svc>("b", j, SvcOpts{.linger = 200ms});
  auto m = ProcessManagerBuilder()
               .name("m")
               .strategy(Strategy::one_for_all)
               .intensity(10, 10s)
               .pre_insert(a, ChildOptions{.restart = no_backoff()})
               .pre_insert(last, ChildOptions{.restart = no_backoff(), .stop_last = true})
               .pre_insert(b, ChildOptions{.restart = no_backoff()})
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  send(a, 2);
  ASSERT_TRUE(j->wait_for("stop b"));
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(stop_last, parent_cancellation_reaches_a_stop_last_child_of_a_nested_manager) {
  auto j = std::make_shared<Journal>();
  EventRecorder rec;
  auto last = std::make_shared<Svc>("last", j, SvcOpts{.ignore_stop = true});
  auto stuck = std::make_shared<Svc>("stuck", j, SvcOpts{.ignore_stop = true});
  auto inner = ProcessManagerBuilder()
                   .name("n")
                   .shutdown_grace_period(10s)
                   .pre_insert(last, last_opts())
                   .pre_insert(stuck)
                   .build();
  auto m = ProcessManagerBuilder()
               .name("m")
               .abandon_timeout(2s)
               .on_event(rec.hook())
               .pre_insert(inner, ChildOptions{.shutdown_timeout = 80ms})
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  run.stop();
  (void)run.finish();
  EXPECT_EQ(j->count("cancelled last"), 1u) << joined(j->lines());
  EXPECT_EQ(j->count("cancelled stuck"), 1u) << joined(j->lines());
  EXPECT_EQ(j->count("stop last"), 0u) << joined(j->lines());
}

}  // namespace
