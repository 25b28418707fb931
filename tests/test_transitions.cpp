// The supervision core's decisions, tested as transitions: a run's books
// (src/core/run_state.hpp) driven by hand with a fake `now`, no io_context,
// no threads and no sleeps. Each test is one of Erlang/OTP's rules (or one
// of ours beside them): the event goes in, the effects (whom to tell, force,
// start, restart or abandon, and the deadline the loop would sleep until)
// come out.
#include "../src/core/run_state.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace {

using namespace std::chrono_literals;
using pm::ChildOptions;
using pm::ChildState;
using pm::RestartOptions;
using pm::RestartPolicy;
using pm::StartOrder;
using pm::Strategy;
using pm::detail::Actions;
using pm::detail::ChildEnd;
using pm::detail::ChildNode;
using pm::detail::clock;
using pm::detail::ManagerCore;
using pm::detail::ManagerRun;
using pm::detail::ReadyNotice;

/// A handle that only counts: the transitions never call it themselves.
class Inbox final : public pm::ProcessControlHandler {
 public:
  void control(pm::RuntimeControlMessage) override {}
};

/// A runnable that is only ever named (a sequential start's queue holds it).
class Named final : public pm::Runnable {
 public:
  explicit Named(std::string name) : name_(std::move(name)) {}
  pm::asio::awaitable<void> process_start() override { co_return; }
  std::string process_name() const override { return name_; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return nullptr; }

 private:
  std::string name_;
};

struct Config {
  Strategy strategy = Strategy::stop_all;
  StartOrder order = StartOrder::concurrent;
  std::size_t max_restarts = 3;
  std::chrono::nanoseconds window = 5s;
  std::chrono::nanoseconds grace = 10s;
  std::chrono::nanoseconds abandon = 2s;
};

/// A run's books with a fake clock; what the shell would do around each
/// transition (link a started child, carry out a restart) done by hand.
class Books {
 public:
  explicit Books(Config c = {})
      : core(std::make_shared<ManagerCore>(ManagerCore::Config{.name = "m",
                                                               .grace = c.grace,
                                                               .abandon = c.abandon,
                                                               .auto_cleanup = true,
                                                               .order = c.order,
                                                               .strategy = c.strategy,
                                                               .max_restarts = c.max_restarts,
                                                               .window = c.window,
                                                               .hook = {}})),
        run(std::make_shared<ManagerRun>(core, pm::asio::any_io_executor{})) {
    run->launching = false;  // the initial children are all started
  }

  const clock::time_point t0 = clock::time_point{} + std::chrono::hours(24);
  clock::time_point now = t0;
  bool deliver = true;  // false: stops stay on their way until a test delivers them

  const std::shared_ptr<ManagerCore> core;
  std::vector<std::shared_ptr<ChildNode>> nodes;  // outlive the run's books
  const std::shared_ptr<ManagerRun> run;

  /// A child started now (as start_child links it).
  ChildNode& add(const std::string& name, ChildOptions options = {}) {
    auto node = std::make_shared<ChildNode>(std::make_shared<Named>(name), std::make_shared<Inbox>(), name, nullptr,
                                            run, std::make_shared<const ChildOptions>(std::move(options)));
    node->mark = now;
    node->run_started = now;
    run->link(node);
    nodes.push_back(node);
    return *node;
  }
  ChildNode& operator[](const std::string& name) {
    for (auto& n : nodes) {
      if (n->name == name) return *n;
    }
    throw std::out_of_range(name);
  }
  void ready(ChildNode& n) {
    n.ready = true;
    ++run->ready_count;
  }
  void all_ready() {
    for (auto& n : nodes) {
      if (n->linked && !n->ready && !n->parked()) ready(*n);
    }
  }

  /// The shell hands the stops over after the lock and says so; a
  /// fan-out's grace is started by the tests themselves (on_told_all).
  Actions delivered(Actions act) {
    if (deliver) {
      const bool fanout = act.stop_fanout;
      act.stop_fanout = false;  // the tests start a fan-out's grace themselves
      run->on_delivered(act, now);
      run->on_released(act.stop.size());
      act.stop_fanout = fanout;
    }
    return act;
  }
  Actions plan() {
    Actions act;
    run->plan(now, false, act);
    return delivered(std::move(act));
  }
  Actions stop() {
    Actions act;
    run->begin_stop(now, act);
    return delivered(std::move(act));
  }
  /// Its coroutine ended: normally, or by throwing (a failure of its own).
  Actions end(ChildNode& n, bool failed = false) {
    ChildEnd e;
    if (failed) {
      e.error = std::make_exception_ptr(std::runtime_error("boom"));
      e.failures.push_back(pm::Failure{"m/" + n.name, e.error, {}, run->stopping});
    }
    Actions act;
    ReadyNotice readiness;
    auto released = run->on_end(n.shared_from_this(), std::move(e), now, act, readiness);
    return delivered(std::move(act));
  }
  /// Cancelled after its timeout, and ended of it.
  Actions end_forced(ChildNode& n) {
    ChildEnd e;
    e.error = std::make_exception_ptr(std::runtime_error("operation aborted"));
    e.timed_out = true;
    Actions act;
    ReadyNotice readiness;
    auto released = run->on_end(n.shared_from_this(), std::move(e), now, act, readiness);
    return delivered(std::move(act));
  }
  /// The shell carries out a restart the plan decided on.
  /// Returns whether the new run is told to stop at once.
  bool restart(ChildNode& n) { return run->on_restarted(n, now) != pm::detail::Phase::running; }

  /// Names of the children told to stop.
  std::vector<std::string> told(const Actions& act) const {
    std::vector<std::string> out;
    for (const auto& n : act.stop) out.push_back(n->name);
    return out;
  }
  static std::vector<std::string> names(const std::vector<std::shared_ptr<ChildNode>>& list) {
    std::vector<std::string> out;
    for (const auto& n : list) out.push_back(n->name);
    return out;
  }
  static std::vector<std::string> names(const std::vector<std::shared_ptr<pm::Runnable>>& list) {
    std::vector<std::string> out;
    for (const auto& r : list) out.push_back(r->process_name());
    return out;
  }
};

using Names = std::vector<std::string>;

// --- Strategies -----------------------------------------------------------

TEST(transitions, stop_all_a_failure_stops_every_other_child_newest_first_and_is_recorded) {
  Books b;
  b.add("a");
  b.add("b");
  b.add("c");
  auto act = b.end(b["b"], true);
  EXPECT_TRUE(b.run->stopping);
  EXPECT_EQ(b.told(act), (Names{"c", "a"}));  // not the one that ended
  ASSERT_EQ(b.run->failures.size(), 1u);
  EXPECT_EQ(b.run->failures[0].process_name, "m/b");
  EXPECT_EQ(b["b"].state, ChildState::failed);
  EXPECT_FALSE(b["b"].linked);
}

TEST(transitions, one_for_one_restarts_only_the_failed_child_after_its_backoff) {
  Books b({.strategy = Strategy::one_for_one});
  b.add("a");
  b.add("b");
  b.all_ready();
  auto act = b.end(b["a"], true);
  EXPECT_TRUE(act.stop.empty());
  EXPECT_FALSE(b.run->stopping);
  EXPECT_TRUE(b["a"].parked());
  EXPECT_EQ(b["a"].state, ChildState::restarting);
  EXPECT_EQ(b.run->next_deadline(), b.t0 + 100ms);  // RestartOptions{}'s first backoff

  b.now = b.t0 + 99ms;
  EXPECT_TRUE(b.plan().restart.empty());
  b.now = b.t0 + 100ms;
  act = b.plan();
  EXPECT_EQ(Books::names(act.restart), (Names{"a"}));
  EXPECT_FALSE(b.restart(b["a"]));
  EXPECT_EQ(b["b"].restarts, 0u);
  EXPECT_EQ(b["a"].restarts, 1u);
}

TEST(transitions, one_for_all_stops_every_other_child_then_restarts_all_in_insertion_order) {
  Books b({.strategy = Strategy::one_for_all});
  b.add("a");
  b.add("b");
  b.add("c");
  b.all_ready();
  auto act = b.end(b["b"], true);
  EXPECT_EQ(b.told(act), (Names{"c", "a"}));  // newest first
  EXPECT_EQ(b.run->group_running, 2u);

  // Due, but the group is still stopping: nobody restarts yet.
  b.now = b.t0 + 1s;
  EXPECT_TRUE(b.plan().restart.empty());
  b.end(b["c"]);
  EXPECT_TRUE(b.plan().restart.empty());
  b.end(b["a"]);
  EXPECT_EQ(b.run->group_running, 0u);
  EXPECT_EQ(b["a"].state, ChildState::restarting);
  EXPECT_EQ(Books::names(b.plan().restart), (Names{"a", "b", "c"}));
}

// The stop a group member was told is handed to its handle after the lock.
// If that member ends meanwhile (it failed instead of stopping) and
// restarted at once, the stop would reach its next run: the restart waits
// until the stop is delivered, and a delivery wakes the loop.
TEST(transitions, a_member_is_not_restarted_while_the_stop_it_was_told_is_on_its_way) {
  Books b({.strategy = Strategy::one_for_all});
  b.add("a");
  b.add("b");
  b.all_ready();
  b.deliver = false;
  auto act = b.end(b["b"], true);  // a is told; the stop is not handed over yet
  ASSERT_EQ(b.told(act), (Names{"a"}));
  EXPECT_EQ(b["a"].undelivered, 1u);
  b.end(b["a"], true);  // a fails instead of stopping, before its stop arrived
  EXPECT_TRUE(b["a"].parked());
  b.now = b.t0 + 1s;
  EXPECT_EQ(Books::names(b.plan().restart), (Names{"b"}));  // a waits for its stop
  EXPECT_EQ(b.run->next_deadline(), clock::time_point::max()) << "no deadline may spin on a held restart";
  b.run->wake = false;
  b.run->on_delivered(act, b.now);
  EXPECT_TRUE(b.run->wake) << "the delivery wakes the loop";
  EXPECT_EQ(b["a"].undelivered, 0u);
  EXPECT_EQ(b.run->undelivered, 1u) << "the run ends only once the delivering thread lets go of its children";
  b.run->on_released(act.stop.size());
  EXPECT_EQ(b.run->undelivered, 0u);
  EXPECT_EQ(Books::names(b.plan().restart), (Names{"a"}));
}

TEST(transitions, rest_for_one_stops_and_restarts_only_the_children_inserted_after_it) {
  Books b({.strategy = Strategy::rest_for_one});
  b.add("a");
  b.add("b");
  b.add("c");
  b.add("d");
  b.all_ready();
  auto act = b.end(b["b"], true);
  EXPECT_EQ(b.told(act), (Names{"d", "c"}));
  b.end(b["d"]);
  b.end(b["c"]);
  b.now = b.t0 + 1s;
  EXPECT_EQ(Books::names(b.plan().restart), (Names{"b", "c", "d"}));
  EXPECT_TRUE(b["a"].linked);
  EXPECT_EQ(b["a"].restarts, 0u);
}

TEST(transitions, a_member_told_to_stop_with_its_group_is_not_told_twice) {
  Books b({.strategy = Strategy::one_for_all});
  b.add("a");
  b.add("b");
  b.add("c");
  b.end(b["c"], true);  // a and b told
  auto act = b.end(b["a"], true);
  // a failed while stopping with its group: it waits with the group, and
  // b, told already, is not told again.
  EXPECT_TRUE(act.stop.empty());
  EXPECT_TRUE(b["a"].parked());
  EXPECT_EQ(b.run->group_running, 1u);
}

TEST(transitions, a_temporary_child_is_not_restarted_with_its_group) {
  const RestartOptions temporary{.policy = RestartPolicy::temporary};
  Books b({.strategy = Strategy::one_for_all});
  b.add("a");
  b.add("t", ChildOptions{.restart = temporary});
  b.add("c");
  auto act = b.end(b["a"], true);
  EXPECT_EQ(b.told(act), (Names{"c", "t"}));
  b.end(b["t"]);
  EXPECT_FALSE(b["t"].linked);  // it left the books
  EXPECT_EQ(b["t"].state, ChildState::stopped);
  b.end(b["c"]);
  b.now = b.t0 + 1s;
  EXPECT_EQ(Books::names(b.plan().restart), (Names{"a", "c"}));
  EXPECT_FALSE(b.run->stopping);
}

// --- Policies -------------------------------------------------------------

TEST(transitions, policies_decide_which_ends_restart) {
  Books b({.strategy = Strategy::one_for_one});
  b.add("permanent", ChildOptions{.restart = RestartOptions{.policy = RestartPolicy::permanent}});
  b.add("transient", ChildOptions{.restart = RestartOptions{.policy = RestartPolicy::transient}});
  b.add("temporary", ChildOptions{.restart = RestartOptions{.policy = RestartPolicy::temporary}});
  b.add("default");
  b.end(b["permanent"]);  // a normal end
  b.end(b["transient"]);
  b.end(b["temporary"], true);
  b.end(b["default"], true);
  EXPECT_TRUE(b["permanent"].parked());  // restarts after any end
  EXPECT_FALSE(b["transient"].linked);   // ended normally: done
  EXPECT_EQ(b["transient"].state, ChildState::stopped);
  EXPECT_FALSE(b["temporary"].linked);  // failed, never restarted ...
  EXPECT_EQ(b["temporary"].state, ChildState::failed);
  EXPECT_TRUE(b["default"].parked());    // transient by default: a failure restarts
  EXPECT_TRUE(b.run->failures.empty());  // ... and not a failure of the manager
  EXPECT_FALSE(b.run->stopping);
}

TEST(transitions, under_stop_all_a_child_with_restart_options_restarts_alone_within_its_own_limit) {
  Books b;  // stop_all
  b.add("a", ChildOptions{.restart = RestartOptions{.max_restarts = 1, .window = 1min}});
  b.add("b");
  EXPECT_TRUE(b.end(b["a"], true).stop.empty());
  EXPECT_TRUE(b["a"].parked());
  b.now += 1s;
  b.plan();
  b.restart(b["a"]);
  auto act = b.end(b["a"], true);  // its second restart within the minute: too many
  EXPECT_TRUE(b.run->stopping);
  EXPECT_EQ(b.told(act), (Names{"b"}));
  ASSERT_EQ(b.run->failures.size(), 1u);
  EXPECT_NE(b.run->failures[0].reason.find("more than 1 restart within 60000 ms"), std::string::npos)
      << b.run->failures[0].reason;
}

// --- Intensity ------------------------------------------------------------

TEST(transitions, more_than_max_restarts_within_the_window_gives_up_naming_the_child) {
  Books b({.strategy = Strategy::one_for_one, .max_restarts = 2, .window = 10s});
  b.add("a");
  b.add("b");
  for (int i = 0; i < 2; ++i) {
    b.end(b["a"], true);
    ASSERT_FALSE(b.run->stopping) << i;
    b.now += 1s;  // past the backoff (100 ms, then 200 ms)
    ASSERT_EQ(b.plan().restart.size(), 1u) << i;
    b.restart(b["a"]);
  }
  auto act = b.end(b["a"], true);  // the third within 10 s
  EXPECT_TRUE(b.run->stopping);
  EXPECT_EQ(b.told(act), (Names{"b"}));
  ASSERT_EQ(b.run->failures.size(), 1u);
  EXPECT_EQ(b.run->failures[0].process_name, "m/a");
  EXPECT_EQ(b.run->failures[0].reason, "restart intensity exceeded (more than 2 restarts within 10000 ms)");
  EXPECT_EQ(b["a"].state, ChildState::failed);
}

TEST(transitions, restarts_spread_wider_than_the_window_never_give_up) {
  Books b({.strategy = Strategy::one_for_one, .max_restarts = 1, .window = 10s});
  b.add("a");
  for (int i = 0; i < 50; ++i) {
    b.end(b["a"], true);
    ASSERT_FALSE(b.run->stopping) << i;
    b.now += 31s;  // the previous restart has left the window, and the backoff (capped at 30 s) is over
    ASSERT_EQ(b.plan().restart.size(), 1u) << i;
    b.restart(b["a"]);
  }
}

TEST(transitions, zero_max_restarts_gives_up_at_the_first_restart) {
  Books b({.strategy = Strategy::one_for_one, .max_restarts = 0});
  b.add("a");
  b.end(b["a"], true);
  EXPECT_TRUE(b.run->stopping);
  ASSERT_EQ(b.run->failures.size(), 1u);
}

// --- Sequential start, reverse stop ---------------------------------------

TEST(transitions, a_sequential_start_starts_each_child_once_the_one_before_is_ready) {
  Books b({.order = StartOrder::sequential});
  for (const char* name : {"a", "b", "c"}) {
    b.run->to_start.emplace_back(std::make_shared<Named>(name), nullptr);
  }
  for (const char* name : {"a", "b", "c"}) {
    auto act = b.plan();
    ASSERT_EQ(Books::names(std::vector<std::shared_ptr<pm::Runnable>>{act.start.at(0).first}), (Names{name}));
    EXPECT_FALSE(b.run->all_ready());  // one on its way
    // What the shell does once it is started.
    auto& n = b.add(name);
    --b.run->pending_starts;
    b.run->awaiting = &n;
    EXPECT_TRUE(b.plan().start.empty()) << name << " is not ready yet";
    b.ready(n);
  }
  EXPECT_TRUE(b.plan().start.empty());
  EXPECT_TRUE(b.run->all_ready());
}

TEST(transitions, a_sequential_stop_goes_in_reverse_each_within_its_own_timeout_then_abandoned) {
  Books b({.order = StartOrder::sequential, .grace = 10s, .abandon = 2s});
  b.add("a");
  b.add("b", ChildOptions{.shutdown_timeout = 1s});
  b.add("c");
  b.all_ready();
  EXPECT_TRUE(b.stop().stop.empty());  // nobody at once: one at a time

  EXPECT_EQ(b.told(b.plan()), (Names{"c"}));
  EXPECT_EQ(b.run->next_deadline(), b.t0 + 10s);
  EXPECT_TRUE(b.plan().stop.empty());  // b waits for c
  b.now = b.t0 + 3s;
  b.end(b["c"]);  // c stops by itself
  EXPECT_EQ(b.told(b.plan()), (Names{"b"}));
  EXPECT_EQ(b.run->next_deadline(), b.t0 + 4s);  // b's own 1 s

  b.now = b.t0 + 4s;
  EXPECT_EQ(Books::names(b.plan().force), (Names{"b"}));
  EXPECT_EQ(b.run->next_deadline(), b.t0 + 6s);  // the abandon bound
  b.now = b.t0 + 6s - 1ns;
  EXPECT_TRUE(b.plan().abandoned.empty());
  b.now = b.t0 + 6s;
  auto act = b.plan();
  EXPECT_EQ(Books::names(act.abandoned), (Names{"b"}));
  EXPECT_EQ(b.told(act), (Names{"a"}));  // and straight on to the one before
  EXPECT_EQ(b.run->not_stopped, (Names{"m/b"}));
}

TEST(transitions, a_group_members_timeout_runs_from_when_its_group_told_it_not_from_the_managers_stop) {
  Books b({.strategy = Strategy::one_for_all, .grace = 10s});
  b.add("a");
  b.add("own", ChildOptions{.shutdown_timeout = 1s});
  b.add("plain");
  b.all_ready();
  EXPECT_EQ(b.told(b.end(b["a"], true)), (Names{"plain", "own"}));  // their group stops at t0
  b.now = b.t0 + 600ms;
  b.stop();  // the manager's stop reaches no one new
  b.run->on_told_all(b.now);
  EXPECT_EQ(b.run->next_deadline(), b.t0 + 1s) << "own's 1 s runs from t0";
  b.now = b.t0 + 1s;
  EXPECT_EQ(Books::names(b.plan().force), (Names{"own"}));
  b.now = b.t0 + 10s;  // plain's grace, also from when its group told it
  EXPECT_EQ(Books::names(b.plan().force), (Names{"plain"}));
}

// --- Stopping last ---------------------------------------------------------

TEST(transitions, a_child_that_stops_last_is_told_once_every_other_child_has_ended) {
  Books b({.grace = 10s, .abandon = 2s});
  b.add("a");
  b.add("n", ChildOptions{.stop_last = true});
  b.add("c");
  b.all_ready();
  auto act = b.stop();
  EXPECT_EQ(b.told(act), (Names{"c", "a"}));
  b.run->on_told_all(b.now);
  b.now = b.t0 + 3s;
  b.end(b["c"]);
  EXPECT_TRUE(b.plan().stop.empty()) << "a still runs";
  b.now = b.t0 + 4s;
  b.end(b["a"]);
  EXPECT_EQ(b.told(b.plan()), (Names{"n"}));
  // Its grace runs from when it was told, not from the stop's start.
  EXPECT_EQ(b.run->next_deadline(), b.t0 + 14s);
  b.now = b.t0 + 14s - 1ns;
  EXPECT_TRUE(b.plan().force.empty());
  b.now = b.t0 + 14s;
  EXPECT_EQ(Books::names(b.plan().force), (Names{"n"}));
}

TEST(transitions, the_others_grace_is_not_held_by_a_child_that_stops_last) {
  Books b({.grace = 10s, .abandon = 2s});
  b.add("a");
  b.add("n", ChildOptions{.stop_last = true});
  b.stop();
  b.run->on_told_all(b.now);
  EXPECT_EQ(b.run->next_deadline(), b.t0 + 10s);  // a's grace; n has no deadline yet
  b.now = b.t0 + 10s;
  EXPECT_EQ(Books::names(b.plan().force), (Names{"a"}));
  b.now = b.t0 + 12s;
  auto act = b.plan();
  EXPECT_EQ(Books::names(act.abandoned), (Names{"a"}));
  EXPECT_EQ(b.told(act), (Names{"n"})) << "told as soon as the others are gone, abandoned ones included";
}

TEST(transitions, children_that_stop_last_and_are_alone_are_told_at_once) {
  Books b;
  b.add("n", ChildOptions{.stop_last = true});
  b.add("p", ChildOptions{.stop_last = true});
  EXPECT_EQ(b.told(b.stop()), (Names{"p", "n"}));
}

TEST(transitions, a_sequential_stop_leaves_the_children_that_stop_last_until_the_end) {
  Books b({.order = StartOrder::sequential});
  b.add("a");
  b.add("n", ChildOptions{.stop_last = true});
  b.add("c");
  b.all_ready();
  b.stop();
  EXPECT_EQ(b.told(b.plan()), (Names{"c"}));
  b.end(b["c"]);
  EXPECT_EQ(b.told(b.plan()), (Names{"a"})) << "n is newer than a, but stops last";
  b.end(b["a"]);
  EXPECT_EQ(b.told(b.plan()), (Names{"n"}));
}

TEST(transitions, a_cancellation_reaches_a_child_that_stops_last_with_the_others) {
  Books b;
  b.add("a");
  b.add("n", ChildOptions{.stop_last = true});
  Actions act;
  b.run->plan(b.now, true, act);
  EXPECT_EQ(Books::names(act.force), (Names{"n", "a"}));
}

// --- Concurrent stop and its timeouts -------------------------------------

TEST(transitions, the_grace_starts_once_every_child_was_told_then_force_then_give_up) {
  Books b({.grace = 10s, .abandon = 2s});
  b.add("a");
  b.add("b");
  b.add("c");
  auto act = b.stop();
  EXPECT_TRUE(act.stop_fanout);
  EXPECT_EQ(b.told(act), (Names{"c", "b", "a"}));
  EXPECT_EQ(b.run->next_deadline(), clock::time_point::max());  // still handing out
  b.now = b.t0 + std::chrono::hours(1);
  EXPECT_TRUE(b.plan().force.empty());  // however late, not before all were told

  const auto told_at = b.now;
  b.run->on_told_all(told_at);
  EXPECT_EQ(b.run->next_deadline(), told_at + 10s);
  b.now = told_at + 10s - 1ns;
  EXPECT_TRUE(b.plan().force.empty());
  b.now = told_at + 10s;
  EXPECT_EQ(b.plan().force.size(), 3u);
  b.end_forced(b["b"]);  // one honours the cancellation
  EXPECT_EQ(b.run->not_stopped, (Names{"m/b"}));
  EXPECT_EQ(b.run->next_deadline(), told_at + 12s);
  b.now = told_at + 12s;
  act = b.plan();
  EXPECT_TRUE(act.give_up);
  EXPECT_EQ(act.abandoned.size(), 2u);
  EXPECT_EQ(b.run->live, 0u);
}

TEST(transitions, a_childs_own_shutdown_timeout_forces_it_alone) {
  Books b({.grace = 10s, .abandon = 2s});
  b.add("quick", ChildOptions{.shutdown_timeout = 1s});
  b.add("slow");
  b.stop();
  b.run->on_told_all(b.now);
  EXPECT_EQ(b.run->next_deadline(), b.t0 + 1s);
  b.now = b.t0 + 1s;
  EXPECT_EQ(Books::names(b.plan().force), (Names{"quick"}));
  b.now = b.t0 + 3s;
  EXPECT_EQ(Books::names(b.plan().abandoned), (Names{"quick"}));
  EXPECT_TRUE(b["slow"].linked);
  b.now = b.t0 + 10s;
  EXPECT_EQ(Books::names(b.plan().force), (Names{"slow"}));
}

TEST(transitions, a_second_stop_changes_nothing) {
  Books b;
  b.add("a");
  EXPECT_EQ(b.stop().stop.size(), 1u);
  b.now += 1s;
  auto again = b.stop();
  EXPECT_TRUE(again.stop.empty());
  EXPECT_EQ(b.run->stop_at, b.t0);
}

// --- Start timeout, readiness, significant children -----------------------

TEST(transitions, a_child_not_ready_within_its_start_timeout_fails_and_stops_the_manager) {
  Books b;
  b.add("slow", ChildOptions{.start_timeout = 2s});
  b.add("other");
  b.ready(b["other"]);
  EXPECT_EQ(b.run->next_deadline(), b.t0 + 2s);
  b.now = b.t0 + 2s - 1ns;
  EXPECT_FALSE(b.plan().stop.size() > 0);
  b.now = b.t0 + 2s;
  auto act = b.plan();
  EXPECT_TRUE(b.run->stopping);
  ASSERT_EQ(b.run->failures.size(), 1u);
  EXPECT_EQ(b.run->failures[0].reason, "start timeout");
  EXPECT_TRUE(b["slow"].last_error);
  // It still runs: it is told to stop like the others.
  EXPECT_EQ(b.told(act), (Names{"other", "slow"}));
  EXPECT_EQ(b["slow"].state, ChildState::stopping);
}

TEST(transitions, ready_means_every_child_ready_all_started_and_not_stopping) {
  Books b;
  b.run->launching = true;
  b.add("a");
  b.add("b");
  b.all_ready();
  EXPECT_FALSE(b.run->all_ready());  // the initial start is still under way
  b.run->launching = false;
  EXPECT_TRUE(b.run->all_ready());
  ReadyNotice notice;
  b.run->update_ready(notice);
  ASSERT_TRUE(notice);
  EXPECT_TRUE(notice->ready);
  b["a"].ready = false;
  --b.run->ready_count;
  EXPECT_FALSE(b.run->all_ready());
  b.ready(b["a"]);
  b.stop();
  EXPECT_FALSE(b.run->all_ready());
}

TEST(transitions, a_significant_child_that_ends_stops_the_manager_without_a_failure) {
  Books b;
  b.add("main", ChildOptions{.significant = true});
  b.add("helper");
  auto act = b.end(b["main"]);
  EXPECT_TRUE(b.run->stopping);
  EXPECT_EQ(b.told(act), (Names{"helper"}));
  EXPECT_TRUE(b.run->failures.empty());
}

// --- Stops and restarts that cross --------------------------------------

TEST(transitions, a_child_waiting_for_its_restart_is_not_told_when_the_manager_stops) {
  Books b({.strategy = Strategy::one_for_one});
  b.add("a");
  b.add("b");
  b.end(b["a"], true);
  auto act = b.stop();
  EXPECT_EQ(b.told(act), (Names{"b"}));
  EXPECT_FALSE(b["a"].linked);
  EXPECT_EQ(b["a"].state, ChildState::stopped);
  EXPECT_EQ(act.released.size(), 1u);
}

TEST(transitions, a_stop_in_the_gap_before_a_restart_begins_reaches_the_new_run) {
  Books b({.strategy = Strategy::one_for_one});
  b.add("a");
  b.add("b");
  b.end(b["a"], true);
  b.now += 1s;
  ASSERT_EQ(b.plan().restart.size(), 1u);  // decided; the shell has not begun it
  auto act = b.stop();
  EXPECT_EQ(b.told(act), (Names{"b"}));  // a's handle would hand the stop to the old run
  EXPECT_EQ(b["a"].phase, pm::detail::Phase::restarting_told);
  EXPECT_TRUE(b.restart(b["a"]));  // the new run is told at once
}

TEST(transitions, a_child_that_ended_is_not_told) {
  Books b;
  auto& a = b.add("a");
  a.phase = pm::detail::Phase::ended;  // ended, its end not yet handled
  EXPECT_TRUE(b.stop().stop.empty());
}

TEST(transitions, a_cancellation_without_a_stop_ends_the_wait_of_a_child_waiting_for_its_restart) {
  Books b({.strategy = Strategy::one_for_one});
  b.add("a");
  b.add("b");
  b.end(b["a"], true);
  ASSERT_TRUE(b["a"].parked());
  Actions act;
  b.run->plan(b.now, true, act);  // our parent cancelled us; nobody said stop
  EXPECT_EQ(Books::names(act.force), (Names{"b"}));
  EXPECT_FALSE(b["a"].linked) << "a parked child would be abandoned at the bound, and reported not stopped";
  EXPECT_EQ(b["a"].state, ChildState::stopped);
  EXPECT_EQ(b.run->live, 1u);
}

TEST(transitions, the_phase_graph_moves_forward_and_comes_back_only_through_a_restart) {
  using pm::detail::Phase;
  using pm::detail::phase_step;
  const Phase all[] = {Phase::running, Phase::told,       Phase::forced,         Phase::ended,
                       Phase::parked,  Phase::restarting, Phase::restarting_told};
  for (Phase p : all) EXPECT_FALSE(phase_step(p, p)) << static_cast<int>(p);
  // Every phase can end, or is on the way to a run that can.
  EXPECT_TRUE(phase_step(Phase::running, Phase::ended));
  EXPECT_TRUE(phase_step(Phase::told, Phase::ended));
  EXPECT_TRUE(phase_step(Phase::forced, Phase::ended));
  EXPECT_TRUE(phase_step(Phase::parked, Phase::ended));
  // A stop is never taken back: only a restart leads to running again.
  for (Phase p : all) {
    if (p != Phase::restarting) {
      EXPECT_FALSE(phase_step(p, Phase::running)) << static_cast<int>(p);
    }
  }
  EXPECT_FALSE(phase_step(Phase::forced, Phase::told));
  EXPECT_FALSE(phase_step(Phase::restarting_told, Phase::running));
  EXPECT_FALSE(phase_step(Phase::ended, Phase::restarting)) << "a restart goes through the parked list";
}

// --- Extremes -------------------------------------------------------------

TEST(transitions, forever_is_forever_and_never_overflows) {
  constexpr auto forever = std::chrono::nanoseconds::max();
  Books b({.strategy = Strategy::one_for_one, .window = forever, .grace = forever, .abandon = forever});
  b.add("a", ChildOptions{.restart = RestartOptions{.backoff = {.initial = forever, .factor = 2.0, .max = forever}}});
  b.add("b", ChildOptions{.start_timeout = forever, .shutdown_timeout = forever});
  b.end(b["a"], true);
  EXPECT_EQ(b.run->next_deadline(), clock::time_point::max());
  b.now = b.t0 + std::chrono::hours(24 * 365 * 100);
  EXPECT_TRUE(b.plan().restart.empty());
  EXPECT_FALSE(b.run->stopping);  // b's start timeout never runs out
  b.stop();
  b.run->on_told_all(b.now);
  EXPECT_EQ(b.run->next_deadline(), clock::time_point::max());
  b.now += std::chrono::hours(24 * 365 * 100);
  EXPECT_TRUE(b.plan().force.empty());
}

TEST(transitions, the_restart_group_of_each_strategy) {
  Books b;
  auto& a = b.add("a");
  auto& m = b.add("m");
  b.add("z");
  auto names = [](const std::vector<ChildNode*>& v) {
    Names out;
    for (auto* n : v) out.push_back(n->name);
    return out;
  };
  EXPECT_TRUE(pm::detail::restart_group(Strategy::stop_all, m, b.run->tail).empty());
  EXPECT_TRUE(pm::detail::restart_group(Strategy::one_for_one, m, b.run->tail).empty());
  EXPECT_EQ(names(pm::detail::restart_group(Strategy::one_for_all, m, b.run->tail)), (Names{"z", "a"}));
  EXPECT_EQ(names(pm::detail::restart_group(Strategy::rest_for_one, m, b.run->tail)), (Names{"z"}));
  EXPECT_EQ(names(pm::detail::restart_group(Strategy::rest_for_one, a, b.run->tail)), (Names{"z", "m"}));
}

}  // namespace
