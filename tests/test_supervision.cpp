// Per-child options, readiness, ordering, strategies, events and status.
#include <processmanager/processmanager.hpp>

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <algorithm>

#include "lifecycle_support.hpp"

namespace {

using namespace pm::test::lifecycle;

// ---------------------------------------------------------------- options

TEST(child_options, designated_initialisers_go_what_first_then_when_as_documented) {
  // docs/supervision.md's one-expression form: if the fields' order
  // changes, this stops compiling.
  const ChildOptions o{.restart = {{.policy = pm::RestartPolicy::permanent,
                                    .max_restarts = 5,
                                    .window = 1min,
                                    .backoff = {.initial = 50ms, .max = 5s},
                                    .reset_after = 1min}},
                       .significant = false,
                       .explicit_ready = true,
                       .start_timeout = 30s,
                       .heartbeat_timeout = 10s,
                       .shutdown_timeout = 5s};
  ASSERT_TRUE(o.restart.has_value());
  EXPECT_EQ(o.restart->policy, pm::RestartPolicy::permanent);
  EXPECT_EQ(o.restart->max_restarts, 5u);
  EXPECT_EQ(o.restart->window, 1min);
  EXPECT_EQ(o.restart->backoff.initial, 50ms);
  EXPECT_EQ(o.restart->backoff.factor, 2.0);  // the default between two given fields
  EXPECT_EQ(o.restart->backoff.max, 5s);
  EXPECT_EQ(o.restart->reset_after, 1min);
  EXPECT_TRUE(o.explicit_ready);
  EXPECT_EQ(o.start_timeout, 30s);
  EXPECT_EQ(o.heartbeat_timeout, 10s);
  EXPECT_EQ(o.shutdown_timeout, 5s);
  auto j = std::make_shared<Journal>();
  EXPECT_NO_THROW(ProcessManagerBuilder().name("m").pre_insert(std::make_shared<Probe>("db", j), o).build());
}

TEST(child_options, bad_options_are_refused_with_the_childs_name) {
  auto j = std::make_shared<Journal>();
  ChildOptions neg;
  neg.shutdown_timeout = -1ms;
  try {
    ProcessManagerBuilder().name("m").pre_insert(std::make_shared<Probe>("db", j), neg);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'db'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("shutdown_timeout"), std::string::npos) << e.what();
  }
  ChildOptions start;
  start.start_timeout = -5ms;
  auto m = ProcessManagerBuilder().name("m").build();
  EXPECT_THROW(m->insert(std::make_shared<Probe>("cache", j), start), std::invalid_argument);
  EXPECT_THROW(ProcessManagerBuilder().intensity(3, 0ns), std::invalid_argument);
}

TEST(child_options, a_childs_shutdown_timeout_replaces_the_grace_period) {
  auto j = std::make_shared<Journal>();
  ChildOptions quick;
  quick.shutdown_timeout = 20ms;
  auto stubborn = std::make_shared<Probe>("stubborn", j, Behaviour{.ignore_shutdown = true});
  auto polite = std::make_shared<Probe>("polite", j);
  // The grace period is longer than the hang guard: only the child's own
  // timeout can end this run in time.
  auto m = ProcessManagerBuilder()
               .name("m")
               .shutdown_grace_period(10min)
               .pre_insert(stubborn, quick)
               .pre_insert(polite)
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(j->count("stop stubborn"), 1u);
  EXPECT_EQ(j->count("stop polite"), 1u);
}

TEST(child_options, a_significant_childs_normal_end_stops_the_manager) {
  auto j = std::make_shared<Journal>();
  ChildOptions significant;
  significant.significant = true;
  auto job = std::make_shared<Probe>("job", j, Behaviour{.end_at_once = true});
  auto server = std::make_shared<Probe>("server", j);
  auto m = ProcessManagerBuilder().name("m").pre_insert(server).pre_insert(job, significant).build();
  Running run(m);
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(j->count("end job"), 1u);
  EXPECT_EQ(j->count("stop server"), 1u);
}

TEST(child_options, a_child_not_ready_within_its_start_timeout_fails_the_manager_by_name) {
  auto j = std::make_shared<Journal>();
  ChildOptions opts;
  opts.start_timeout = 30ms;
  auto slow = std::make_shared<Probe>("slow", j, Behaviour{.defer_ready = true});
  auto other = std::make_shared<Probe>("other", j);
  auto m = ProcessManagerBuilder().name("m").pre_insert(other).pre_insert(slow, opts).build();
  Running run(m);
  auto pe = process_error(run.finish());
  ASSERT_TRUE(pe);
  EXPECT_EQ(pe->process_name(), "m/slow");
  EXPECT_EQ(pe->reason(), "start timeout");
  EXPECT_NE(std::string(pe->what()).find("did not become ready within 30 ms"), std::string::npos) << pe->what();
  EXPECT_EQ(j->count("stop other"), 1u);
}

TEST(child_options, restart_options_under_stop_all_restart_the_child_in_place) {
  auto j = std::make_shared<Journal>();
  ChildOptions opts;
  opts.restart = no_backoff();
  auto flaky = std::make_shared<Probe>("flaky", j, Behaviour{.fail_first_runs = 2});
  auto m = ProcessManagerBuilder().name("m").pre_insert(flaky, opts).build();
  Running run(m);
  ASSERT_TRUE(j->wait_for("start flaky", 3));
  ASSERT_TRUE(run.wait_ready());
  auto status = m->status();
  ASSERT_EQ(status.children.size(), 1u);
  EXPECT_EQ(status.children[0].path, "m/flaky");
  EXPECT_EQ(status.children[0].restarts, 2u);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

// -------------------------------------------------------------- readiness

TEST(readiness, the_manager_is_ready_once_every_child_is_and_not_while_stopping) {
  auto j = std::make_shared<Journal>();
  auto quick = std::make_shared<Probe>("quick", j);
  auto loader = std::make_shared<Probe>("loader", j, Behaviour{.defer_ready = true});
  auto m = ProcessManagerBuilder().name("m").pre_insert(quick).pre_insert(loader).build();
  Running run(m);
  ASSERT_TRUE(j->wait_for("start loader"));
  // The loader has its ticker but has not said it is ready.
  EXPECT_FALSE(run.wait_ready(20ms));
  EXPECT_FALSE(m->is_ready());
  send(loader, 1);
  EXPECT_TRUE(run.wait_ready());
  EXPECT_TRUE(m->is_ready());
  const auto st = m->status();
  EXPECT_EQ(st.state, ChildState::ready);
  for (const auto& c : st.children) EXPECT_EQ(c.state, ChildState::ready) << c.path;
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_FALSE(m->is_ready());
}

// A child whose process_handle() holds up the manager's start of it until
// the child before it is ready, and meanwhile asks whether the manager says
// it is ready: it must not, one of its children does not even exist yet.
class LateStarter : public pm::Runnable {
 public:
  LateStarter(std::shared_ptr<Journal> j, EventRecorder& rec) : inner_("late", std::move(j)), rec_(rec) {}
  asio::awaitable<void> process_start() override { return inner_.process_start(); }
  std::string process_name() const override { return inner_.process_name(); }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override {
    if (auto m = manager.lock(); m && !checked.exchange(true)) {
      EXPECT_TRUE(rec_.wait_for([](const pm::Event& e) {
        return e.kind == EventKind::state && e.path == "m/early" && e.state == ChildState::ready;
      }));
      ready_meanwhile = m->is_ready();
    }
    return inner_.process_handle();
  }
  std::weak_ptr<pm::ProcessManager> manager;  // armed once the manager is built
  std::atomic<bool> checked{false};
  std::atomic<bool> ready_meanwhile{false};

 private:
  Probe inner_;
  EventRecorder& rec_;
};

TEST(readiness, the_manager_is_not_ready_before_all_its_first_children_have_started) {
  auto j = std::make_shared<Journal>();
  EventRecorder rec;
  auto early = std::make_shared<Probe>("early", j);
  auto late = std::make_shared<LateStarter>(j, rec);
  auto m = ProcessManagerBuilder().name("m").on_event(rec.hook()).pre_insert(early).pre_insert(late).build();
  late->manager = m;
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  EXPECT_TRUE(late->checked);
  EXPECT_FALSE(late->ready_meanwhile) << "ready with only 'early' started";
  EXPECT_EQ(m->status().children.size(), 2u);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(readiness, explicit_ready_ignores_the_ticker_and_wait_ready_ends_false_when_shutdown_begins) {
  auto j = std::make_shared<Journal>();
  auto lazy = pm::make_runnable("lazy", [j](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    j->add("start lazy");
    for (;;) {
      auto msg = co_await ctx.next_control();
      if (msg.is_shutdown()) co_return;
      if (msg.custom_if<int>() != nullptr) ctx.ready();
    }
  });
  ChildOptions opts;
  opts.explicit_ready = true;
  auto m = ProcessManagerBuilder().name("m").pre_insert(lazy, opts).build();
  Running run(m);
  ASSERT_TRUE(j->wait_for("start lazy"));
  auto pending = asio::co_spawn(run.io(), m->wait_ready(pm::test::hang_guard), asio::use_future);
  EXPECT_EQ(m->status().children.at(0).state, ChildState::running);
  run.stop();
  EXPECT_FALSE(pending.get()) << "a stopping manager is not ready";
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(readiness, a_nested_managers_readiness_reaches_its_parent_both_ways) {
  auto j = std::make_shared<Journal>();
  auto loader = std::make_shared<Probe>("loader", j, Behaviour{.defer_ready = true});
  ChildOptions slow_restart;
  slow_restart.restart = RestartOptions{};
  slow_restart.restart->backoff.initial = 1h;  // stays "restarting" for the rest of the test
  slow_restart.restart->backoff.max = 1h;
  auto inner =
      ProcessManagerBuilder().name("inner").strategy(Strategy::one_for_one).pre_insert(loader, slow_restart).build();
  EventRecorder rec;
  auto root = ProcessManagerBuilder().name("root").on_event(rec.hook()).pre_insert(inner).build();
  Running run(root);
  ASSERT_TRUE(j->wait_for("start loader"));
  EXPECT_FALSE(run.wait_ready(20ms));
  send(loader, 1);
  ASSERT_TRUE(run.wait_ready());
  send(loader, 2);  // fails; restarts only in an hour
  // Our node for "inner" drops back from ready to running, under our lock,
  // before the hook hears of it.
  ASSERT_TRUE(rec.wait_for([](const pm::Event& e) {
    return e.kind == EventKind::state && e.path == "root/inner" && e.previous == ChildState::ready &&
           e.state == ChildState::running;
  }));
  EXPECT_FALSE(root->is_ready());
  EXPECT_EQ(root->status().children.at(0).children.at(0).state, ChildState::restarting);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

// --------------------------------------------------------------- ordering

TEST(ordering, sequential_start_waits_for_readiness_and_stop_is_in_exact_reverse_order) {
  auto j = std::make_shared<Journal>();
  auto a = std::make_shared<Probe>("a", j, Behaviour{.defer_ready = true});
  auto b = std::make_shared<Probe>("b", j, Behaviour{.defer_ready = true});
  auto c = std::make_shared<Probe>("c", j);
  auto m = ProcessManagerBuilder()
               .name("m")
               .start_order(StartOrder::sequential)
               .pre_insert(a)
               .pre_insert(b)
               .pre_insert(c)
               .build();
  Running run(m);
  ASSERT_TRUE(j->wait_for("start a"));
  EXPECT_FALSE(run.wait_ready(20ms));
  EXPECT_EQ(j->count("start b"), 0u) << "b started before a was ready";
  send(a, 1);
  ASSERT_TRUE(j->wait_for("start b"));
  EXPECT_EQ(j->count("start c"), 0u) << "c started before b was ready";
  send(b, 1);
  ASSERT_TRUE(run.wait_ready());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(j->with_prefix("start "), (std::vector<std::string>{"start a", "start b", "start c"}));
  EXPECT_EQ(j->with_prefix("stop "), (std::vector<std::string>{"stop c", "stop b", "stop a"}));
}

TEST(ordering, a_failure_also_stops_the_others_in_reverse_order) {
  auto j = std::make_shared<Journal>();
  std::vector<std::shared_ptr<Probe>> probes;
  ProcessManagerBuilder b;
  b.name("m").start_order(StartOrder::sequential);
  for (const char* n : {"a", "b", "c", "d"}) {
    probes.push_back(std::make_shared<Probe>(n, j));
    b.pre_insert(probes.back());
  }
  auto m = b.build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  send(probes[1], 2);  // b fails
  auto pe = process_error(run.finish());
  ASSERT_TRUE(pe);
  EXPECT_EQ(pe->process_name(), "m/b");
  EXPECT_EQ(j->with_prefix("stop "), (std::vector<std::string>{"stop d", "stop c", "stop a"}));
}

TEST(ordering, sequential_stop_gives_each_child_its_own_timeout_then_moves_on) {
  auto j = std::make_shared<Journal>();
  ChildOptions quick;
  quick.shutdown_timeout = 10ms;
  auto a = std::make_shared<Probe>("a", j);
  auto stuck = std::make_shared<Probe>("stuck", j, Behaviour{.ignore_shutdown = true});
  auto m = ProcessManagerBuilder()
               .name("m")
               .start_order(StartOrder::sequential)
               .shutdown_grace_period(10min)
               .pre_insert(a)
               .pre_insert(stuck, quick)
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(j->with_prefix("stop "), (std::vector<std::string>{"stop stuck", "stop a"}));
}

// ------------------------------------------------------------- strategies

struct Trio {
  std::shared_ptr<Journal> j = std::make_shared<Journal>();
  std::shared_ptr<Probe> a = std::make_shared<Probe>("a", j);
  std::shared_ptr<Probe> b = std::make_shared<Probe>("b", j);
  std::shared_ptr<Probe> c = std::make_shared<Probe>("c", j);
  std::shared_ptr<pm::ProcessManager> build(Strategy s, EventRecorder* rec = nullptr) {
    ChildOptions o;
    o.restart = no_backoff();
    ProcessManagerBuilder bld;
    bld.name("m").strategy(s).intensity(10, 1min).pre_insert(a, o).pre_insert(b, o).pre_insert(c, o);
    if (rec != nullptr) bld.on_event(rec->hook());
    return bld.build();
  }
};

TEST(strategy, one_for_one_restarts_only_the_failed_child) {
  Trio t;
  auto m = t.build(Strategy::one_for_one);
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  send(t.b, 2);
  ASSERT_TRUE(t.j->wait_for("start b", 2));
  ASSERT_TRUE(run.wait_ready());
  EXPECT_EQ(t.a->runs.load(), 1);
  EXPECT_EQ(t.b->runs.load(), 2);
  EXPECT_EQ(t.c->runs.load(), 1);
  EXPECT_EQ(t.j->count("stop a") + t.j->count("stop c"), 0u);
  EXPECT_EQ(m->status().children.at(1).restarts, 1u);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(strategy, a_child_waiting_for_its_restart_is_counted_but_not_running) {
  auto j = std::make_shared<Journal>();
  auto crashy = std::make_shared<Probe>("crashy", j, Behaviour{.fail_first_runs = 1});
  auto steady = std::make_shared<Probe>("steady", j);
  EventRecorder rec;
  const RestartOptions slow{.policy = RestartPolicy::permanent,
                            .backoff = {.initial = std::chrono::hours(1), .max = std::chrono::hours(1)}};
  auto m = ProcessManagerBuilder()
               .name("m")
               .strategy(Strategy::one_for_one)
               .on_event(rec.hook())
               .pre_insert(crashy, ChildOptions{.restart = slow})
               .pre_insert(steady)
               .build();
  Running run(m);
  ASSERT_TRUE(rec.wait_for([](const pm::Event& e) { return e.kind == EventKind::restart; }));
  // crashy may fail before steady is even inserted: wait for steady's run too.
  ASSERT_TRUE(j->wait_for("start steady", 1));
  EXPECT_EQ(m->child_count(), 2u);
  EXPECT_EQ(m->running_count(), 1u);  // crashy waits an hour for its restart
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

// Retry forever, both ways the docs give it: under stop_all the child's own
// RestartOptions::forever() is the whole story; under one_for_one the
// manager's intensity must be unlimited too. 400 failures with no wait at
// all outrun any counted intensity, and the managers never give up.
TEST(strategy, retry_forever_outlasts_any_intensity_under_stop_all_and_one_for_one) {
  for (const auto strategy : {Strategy::stop_all, Strategy::one_for_one}) {
    auto j = std::make_shared<Journal>();
    auto flaky = std::make_shared<Probe>("flaky", j, Behaviour{.fail_first_runs = 400});
    ProcessManagerBuilder b;
    b.name("m").strategy(strategy).pre_insert(
        flaky, ChildOptions{.restart = RestartOptions::forever({.initial = 0ms, .max = 0ms})});
    if (strategy != Strategy::stop_all) b.intensity(RestartOptions::unlimited, std::chrono::hours(1));
    auto m = b.build();
    Running run(m);
    ASSERT_TRUE(j->wait_for("start flaky", 401));
    ASSERT_TRUE(run.wait_ready());
    EXPECT_EQ(m->status().children.at(0).restarts, 400u);
    run.stop();
    EXPECT_EQ(run.finish(), nullptr);
  }
}

TEST(strategy, one_for_all_stops_the_others_and_restarts_all) {
  Trio t;
  auto m = t.build(Strategy::one_for_all);
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  send(t.b, 2);
  ASSERT_TRUE(t.j->wait_for("start a", 2));
  ASSERT_TRUE(t.j->wait_for("start b", 2));
  ASSERT_TRUE(t.j->wait_for("start c", 2));
  ASSERT_TRUE(run.wait_ready());
  EXPECT_EQ(t.a->runs.load(), 2);
  EXPECT_EQ(t.b->runs.load(), 2);
  EXPECT_EQ(t.c->runs.load(), 2);
  const auto lines = t.j->lines();
  // After b failed: c and a were told to stop (concurrently: any order),
  // then all three started again.
  const auto fail_at = std::find(lines.begin(), lines.end(), "fail b");
  ASSERT_NE(fail_at, lines.end());
  std::vector<std::string> stops;
  std::vector<std::string> starts;
  for (auto it = fail_at + 1; it != lines.end(); ++it) {
    if (it->rfind("stop ", 0) == 0) stops.push_back(*it);
    if (it->rfind("start ", 0) == 0) starts.push_back(*it);
  }
  std::sort(stops.begin(), stops.end());
  std::sort(starts.begin(), starts.end());
  EXPECT_EQ(stops, (std::vector<std::string>{"stop a", "stop c"}));
  EXPECT_EQ(starts, (std::vector<std::string>{"start a", "start b", "start c"}));
  for (const auto& c : m->status().children) EXPECT_EQ(c.restarts, 1u) << c.path;
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(strategy, rest_for_one_restarts_the_failed_child_and_those_inserted_after_it) {
  Trio t;
  auto m = t.build(Strategy::rest_for_one);
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  send(t.b, 2);
  ASSERT_TRUE(t.j->wait_for("start b", 2));
  ASSERT_TRUE(t.j->wait_for("start c", 2));
  ASSERT_TRUE(run.wait_ready());
  EXPECT_EQ(t.a->runs.load(), 1);
  EXPECT_EQ(t.b->runs.load(), 2);
  EXPECT_EQ(t.c->runs.load(), 2);
  EXPECT_EQ(t.j->count("stop a"), 0u);
  EXPECT_EQ(t.j->count("stop c"), 1u);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(strategy, temporary_children_are_not_restarted_and_do_not_fail_the_manager) {
  auto j = std::make_shared<Journal>();
  auto once = std::make_shared<Probe>("once", j, Behaviour{.fail_first_runs = 1});
  auto keep = std::make_shared<Probe>("keep", j);
  ChildOptions temp;
  temp.restart = no_backoff(RestartPolicy::temporary);
  auto m =
      ProcessManagerBuilder().name("m").strategy(Strategy::one_for_one).pre_insert(once, temp).pre_insert(keep).build();
  Running run(m);
  ASSERT_TRUE(j->wait_for("fail once"));
  ASSERT_TRUE(run.wait_ready());
  EXPECT_EQ(once->runs.load(), 1);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(strategy, exceeding_the_intensity_fails_the_manager_and_escalates_to_its_parent) {
  auto j = std::make_shared<Journal>();
  auto crashy = std::make_shared<Probe>("crashy", j, Behaviour{.fail_first_runs = 1000});
  ChildOptions o;
  o.restart = no_backoff();
  auto inner = ProcessManagerBuilder()
                   .name("inner")
                   .strategy(Strategy::one_for_one)
                   .intensity(3, 1min)
                   .pre_insert(crashy, o)
                   .build();
  auto bystander = std::make_shared<Probe>("bystander", j);
  EventRecorder rec;
  auto root = ProcessManagerBuilder().name("root").on_event(rec.hook()).pre_insert(inner).pre_insert(bystander).build();
  Running run(root);
  auto pe = process_error(run.finish());
  ASSERT_TRUE(pe);
  EXPECT_EQ(pe->process_name(), "root/inner/crashy");
  EXPECT_EQ(pe->reason(), "restart intensity exceeded (more than 3 restarts within 60000 ms)");
  EXPECT_EQ(crashy->runs.load(), 4);  // the first run and three restarts
  EXPECT_EQ(j->count("stop bystander"), 1u);
  // The parent's hook saw the nested give-up with the full path.
  EXPECT_TRUE(
      rec.wait_for([](const pm::Event& e) { return e.kind == EventKind::give_up && e.path == "root/inner/crashy"; }));
}

// ----------------------------------------------------------------- errors

TEST(process_error, separates_the_root_cause_from_collateral_failures_and_children_that_did_not_stop) {
  auto j = std::make_shared<Journal>();
  auto culprit = std::make_shared<Probe>("culprit", j);
  auto sore = std::make_shared<Probe>("sore", j, Behaviour{.throw_on_shutdown = true});
  auto stuck = std::make_shared<Probe>("stuck", j, Behaviour{.ignore_shutdown = true});
  auto m = ProcessManagerBuilder()
               .name("m")
               .shutdown_grace_period(10ms)
               .pre_insert(culprit)
               .pre_insert(sore)
               .pre_insert(stuck)
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  send(culprit, 2);
  auto pe = process_error(run.finish());
  ASSERT_TRUE(pe);
  EXPECT_EQ(pe->root_cause().process_name, "m/culprit");
  EXPECT_FALSE(pe->root_cause().collateral);
  const auto collateral = pe->collateral();
  ASSERT_EQ(collateral.size(), 1u);
  EXPECT_EQ(collateral[0].process_name, "m/sore");
  EXPECT_EQ(pe->not_stopped(), (std::vector<std::string>{"m/stuck"}));
}

// ----------------------------------------------------------------- events

TEST(events, the_hook_sees_a_complete_ordered_story_of_failure_restart_and_give_up) {
  auto j = std::make_shared<Journal>();
  EventRecorder rec;
  auto flaky = std::make_shared<Probe>("flaky", j, Behaviour{.fail_first_runs = 1000});
  auto calm = std::make_shared<Probe>("calm", j);
  ChildOptions o;
  o.restart = no_backoff();
  std::shared_ptr<pm::ProcessManager> m;
  // The hook calls back into the manager: it must never run under its lock.
  std::atomic<int> snapshots{0};
  auto hook = rec.hook();
  // Sequential: calm is ready before flaky starts, so calm's story does not
  // depend on how fast flaky gives up.
  m = ProcessManagerBuilder()
          .name("m")
          .start_order(StartOrder::sequential)
          .strategy(Strategy::one_for_one)
          .intensity(1, 1min)
          .on_event([&, hook](const pm::Event& e) {
            hook(e);
            if (m) {
              (void)m->status();
              snapshots.fetch_add(1);
            }
          })
          .pre_insert(calm)
          .pre_insert(flaky, o)
          .build();
  Running run(m);
  auto pe = process_error(run.finish());
  ASSERT_TRUE(pe);
  EXPECT_GT(snapshots.load(), 0);
  EXPECT_EQ(rec.story("m/flaky"),
            (std::vector<std::string>{"state:starting", "state:running", "state:ready", "restart", "state:restarting",
                                      "state:starting", "state:running", "state:ready", "give_up", "state:failed"}));
  EXPECT_EQ(rec.story("m/calm"), (std::vector<std::string>{"state:starting", "state:running", "state:ready",
                                                           "state:stopping", "state:stopped"}));
  for (const auto& e : rec.events()) {
    if (e.kind == EventKind::restart) {
      EXPECT_EQ(e.backoff, 0ns);
      EXPECT_TRUE(e.cause);
    }
  }
  // Timestamps never go backwards within a child's story.
  auto events = rec.events();
  for (std::size_t i = 1; i < events.size(); ++i) {
    if (events[i].path == events[i - 1].path) {
      EXPECT_LE(events[i - 1].time, events[i].time);
    }
  }
}

TEST(events, control_deliveries_and_abandonment_are_reported) {
  EventRecorder rec;
  std::atomic<bool> stop_spinning{false};
  auto j = std::make_shared<Journal>();
  // Ignores shutdown and terminal cancellation alike: only abandonment ends
  // the manager's wait for it.
  auto deaf = pm::make_runnable("deaf", [&stop_spinning, j](pm::RuntimeContext&) -> asio::awaitable<void> {
    co_await asio::this_coro::throw_if_cancelled(false);
    auto ex = co_await asio::this_coro::executor;
    j->add("start deaf");
    while (!stop_spinning) co_await asio::post(ex, asio::use_awaitable);
  });
  auto m = ProcessManagerBuilder()
               .name("m")
               .shutdown_grace_period(10ms)
               .abandon_timeout(10ms)
               .on_event(rec.hook())
               .pre_insert(deaf)
               .build();
  {
    Running run(m);
    ASSERT_TRUE(j->wait_for("start deaf"));
    ASSERT_TRUE(run.wait_ready());
    auto h = m->process_handle();
    h->request_reload();
    run.stop();
    ASSERT_TRUE(rec.wait_for([](const pm::Event& e) { return e.kind == EventKind::abandoned; }));
    stop_spinning = true;  // let the abandoned coroutine end so the io_context drains
    EXPECT_EQ(run.finish(), nullptr);
  }
  // Once abandoned it is no longer the manager's: its eventual end is not
  // reported (the run completed, and completion means every event of the
  // run was delivered before it).
  EXPECT_EQ(rec.story("m/deaf"), (std::vector<std::string>{"state:starting", "state:running", "state:ready", "control",
                                                           "state:stopping", "abandoned", "state:abandoned"}));
  for (const auto& e : rec.events()) {
    if (e.kind == EventKind::control) {
      EXPECT_EQ(e.control, pm::ControlKind::reload);
    }
  }
}

TEST(events, a_replaced_log_sink_receives_failures_with_their_path) {
  std::mutex mu;
  std::vector<std::string> lines;
  pm::set_log_level(pm::LogLevel::info);
  pm::set_log_sink([&](pm::LogLevel level, std::string_view path, std::string_view message) {
    std::lock_guard lock(mu);
    lines.push_back(std::string(to_string(level)) + " " + std::string(path) + ": " + std::string(message));
  });
  auto j = std::make_shared<Journal>();
  auto bad = std::make_shared<Probe>("bad", j, Behaviour{.fail_first_runs = 1});
  auto m = ProcessManagerBuilder().name("m").pre_insert(bad).build();
  Running run(m);
  EXPECT_TRUE(run.finish());
  pm::set_log_sink({});
  pm::set_log_level(std::nullopt);
  std::lock_guard lock(mu);
  bool found = false;
  for (const auto& l : lines) found = found || l.rfind("ERROR m/bad: failed: bad failed on run 1", 0) == 0;
  EXPECT_TRUE(found) << "no ERROR line for m/bad among " << lines.size() << " lines";
}

// ----------------------------------------------------------------- status

TEST(status, a_nested_trees_status_names_every_child_and_round_trips_through_json) {
  auto j = std::make_shared<Journal>();
  auto leaf = std::make_shared<Probe>("leaf", j);
  auto other = std::make_shared<Probe>("other", j);
  auto inner = ProcessManagerBuilder().name("inner").pre_insert(leaf).pre_insert(other).build();
  auto top = std::make_shared<Probe>("top", j);
  auto root = ProcessManagerBuilder().name("root").pre_insert(top).pre_insert(inner).build();
  Running run(root);
  ASSERT_TRUE(run.wait_ready());
  const pm::ChildStatus st = root->status();
  EXPECT_EQ(st.path, "root");
  EXPECT_TRUE(st.ready);
  ASSERT_EQ(st.children.size(), 2u);
  EXPECT_EQ(st.children[0].path, "root/top");
  EXPECT_EQ(st.children[1].path, "root/inner");
  EXPECT_EQ(st.children[1].state, ChildState::ready);
  ASSERT_EQ(st.children[1].children.size(), 2u);
  EXPECT_EQ(st.children[1].children[0].path, "root/inner/leaf");
  EXPECT_EQ(st.children[1].children[1].path, "root/inner/other");

  const boost::json::value doc = pm::to_json(st);
  const std::string text = boost::json::serialize(doc);
  EXPECT_NE(text.find("\"root/inner/leaf\""), std::string::npos) << text;
  const pm::ChildStatus back = pm::status_from_json(boost::json::parse(text));
  EXPECT_EQ(back, st);
  EXPECT_EQ(boost::json::serialize(pm::to_json(back)), text);

  auto broken = doc;
  broken.as_object()["children"].as_array()[0].as_object()["state"] = "sleepy";
  try {
    (void)pm::status_from_json(broken);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("root/top"), std::string::npos) << e.what();
  }
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(root->status().state, ChildState::stopped);
}

// -------------------------------------------------------------- heartbeat

TEST(heartbeat, a_child_that_does_not_beat_within_its_timeout_is_reported_stale) {
  auto j = std::make_shared<Journal>();
  auto silent = std::make_shared<Beating>("silent", j);
  auto relaxed = std::make_shared<Probe>("relaxed", j);
  auto plain = std::make_shared<Probe>("plain", j);
  auto m = ProcessManagerBuilder()
               .name("m")
               .pre_insert(silent, ChildOptions{.heartbeat_timeout = 20ms})
               .pre_insert(relaxed, ChildOptions{.heartbeat_timeout = std::chrono::hours(1)})
               .pre_insert(plain)
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  // Time is the subject here, and status() is a snapshot with no event to
  // wait for: this sleep only bounds the elapsed time from below (at least
  // 20 ms since 'silent' started, without a beat), so no machine is too slow
  // for it. It synchronises with no other thread.
  std::this_thread::sleep_for(30ms);
  auto st = m->status();
  EXPECT_EQ(pm::stale_paths(st), std::vector<std::string>{"m/silent"});
  EXPECT_NE(boost::json::serialize(pm::to_json(st)).find("\"stale\":true"), std::string::npos);
  EXPECT_EQ(pm::status_from_json(pm::to_json(st)), st);
  // A beat newer than the timeout makes it fresh again.
  silent->beats().set(std::chrono::steady_clock::now() + std::chrono::hours(1));
  EXPECT_TRUE(pm::stale_paths(m->status()).empty());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  // Stopped children are not stale: they are not expected to beat.
  EXPECT_TRUE(pm::stale_paths(m->status()).empty());
}

TEST(heartbeat, guards_contexts_and_blocking_services_report_their_beats) {
  pm::RuntimeGuard guard("g");
  EXPECT_FALSE(guard.handle()->last_heartbeat().has_value());
  const auto before = std::chrono::steady_clock::now();
  guard.heartbeat();
  ASSERT_TRUE(guard.handle()->last_heartbeat().has_value());
  EXPECT_GE(*guard.handle()->last_heartbeat(), before);

  auto j = std::make_shared<Journal>();
  auto worker = pm::make_blocking_runnable("worker", [j](pm::BlockingContext& ctx) {
    ctx.heartbeat();
    j->add("beat");
    while (ctx.wait_for(std::chrono::hours(1))) {
    }
  });
  auto lambda = pm::make_runnable("lambda", [j](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    ctx.heartbeat();
    j->add("lambda beat");
    for (;;) {
      auto msg = co_await ctx.next_control();
      if (msg.is_shutdown()) co_return;
    }
  });
  auto m = ProcessManagerBuilder()
               .name("m")
               .pre_insert(worker, ChildOptions{.heartbeat_timeout = std::chrono::hours(1)})
               .pre_insert(lambda)
               .build();
  Running run(m);
  ASSERT_TRUE(j->wait_for("beat"));
  ASSERT_TRUE(j->wait_for("lambda beat"));
  EXPECT_TRUE(worker->process_handle()->last_heartbeat().has_value());
  EXPECT_TRUE(lambda->process_handle()->last_heartbeat().has_value());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);

  try {
    (void)ProcessManagerBuilder().name("m").pre_insert(worker, ChildOptions{.heartbeat_timeout = 0ms}).build();
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("worker"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("heartbeat_timeout"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------- observe

TEST(observe, observers_hear_the_managers_own_states_and_controls_in_order) {
  auto j = std::make_shared<Journal>();
  auto loader = std::make_shared<Probe>("loader", j, Behaviour{.defer_ready = true});
  auto m = ProcessManagerBuilder().name("m").pre_insert(loader).build();
  EventRecorder rec;
  EventRecorder second;
  auto token = m->observe(rec.hook());
  auto token2 = m->observe(second.hook());
  EXPECT_THROW((void)m->observe({}), std::invalid_argument);
  Running run(m);
  ASSERT_TRUE(j->wait_for("start loader"));
  send(loader, 1);
  ASSERT_TRUE(rec.wait_for([](const pm::Event& e) { return e.state == ChildState::ready; }));
  m->process_handle()->request_reload();
  ASSERT_TRUE(rec.wait_for([](const pm::Event& e) { return e.kind == EventKind::control; }));
  token2.reset();  // the second observer leaves; the first stays
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  // A shutdown is heard as "stopping", not as a control notice.
  EXPECT_EQ(rec.story("m"),
            (std::vector<std::string>{"state:running", "state:ready", "control", "state:stopping", "state:stopped"}));
  for (const auto& e : rec.events()) EXPECT_EQ(e.path, "m");
  EXPECT_EQ(second.story("m"), (std::vector<std::string>{"state:running", "state:ready", "control"}));
  EXPECT_EQ(rec.events()[2].control, pm::ControlKind::reload);
}

}  // namespace
