// Adversarial tests of the core's promises about a child awaiting its own
// manager's stop, temporary children in group restarts, handles whose
// control() throws, and managers whose io_context is torn down
// (docs/supervision.md).
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

// ============================================ 2. a child awaiting its own stop

/// A child that awaits its tree's shutdown(); `then` says what it does once
/// the wait ends with operation_aborted: "rethrow", "again" (await it again,
/// then rethrow), "swallow" (return normally).
std::shared_ptr<pm::Runnable> self_waiter(const std::string& name, std::weak_ptr<pm::ProcessManager> tree,
                                          std::shared_ptr<Journal> j, std::string then) {
  return pm::make_runnable(name, [tree, j, then, name](pm::RuntimeContext&) -> asio::awaitable<void> {
    auto t = tree.lock();
    if (!t) co_return;
    auto h = t->process_handle();
    t.reset();
    try {
      co_await h->shutdown();
      j->add(std::string(name).append(" completed"));
    } catch (const boost::system::system_error& e) {
      j->add(name + (e.code() == asio::error::operation_aborted ? " aborted" : " other"));
      if (then == "swallow") co_return;
      if (then == "rethrow") throw;
    }
    if (then == "again") {
      try {
        co_await h->shutdown();
        j->add(std::string(name).append(" completed again"));
      } catch (const boost::system::system_error& e) {
        j->add(name + (e.code() == asio::error::operation_aborted ? " aborted again" : " other again"));
        throw;
      }
    }
  });
}

TEST(core_review, a_self_waiter_that_awaits_shutdown_again_after_the_abort) {
  auto j = std::make_shared<Journal>();
  EventRecorder rec;
  auto other = std::make_shared<Probe>("other", j);
  auto m = ProcessManagerBuilder().name("m").abandon_timeout(1h).on_event(rec.hook()).pre_insert(other).build();
  m->insert(self_waiter("sw", m, j, "again"), ChildOptions{.shutdown_timeout = 50ms});
  Running run(m);
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(j->count("sw aborted"), 1u);
  EXPECT_EQ(j->count("sw aborted again"), 1u);
  EXPECT_TRUE(has_event(rec, "m/sw", ChildState::stopped, "did not stop within its timeout; cancelled"))
      << story_of(rec, "m/sw");
}

TEST(core_review, a_self_waiter_that_swallows_the_abort_is_still_reported_cancelled) {
  auto j = std::make_shared<Journal>();
  EventRecorder rec;
  auto other = std::make_shared<Probe>("other", j);
  auto m = ProcessManagerBuilder().name("m").abandon_timeout(1h).on_event(rec.hook()).pre_insert(other).build();
  m->insert(self_waiter("sw", m, j, "swallow"), ChildOptions{.shutdown_timeout = 50ms});
  Running run(m);
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(j->count("sw aborted"), 1u);
  // docs/supervision.md: at the end of its timeout "it is cancelled; the
  // wait ends with operation_aborted, the child ends, and it is reported
  // as stopped with 'did not stop within its timeout; cancelled'".
  EXPECT_TRUE(has_event(rec, "m/sw", ChildState::stopped, "did not stop within its timeout; cancelled"))
      << story_of(rec, "m/sw");
}

TEST(core_review, a_nested_managers_child_awaiting_the_roots_shutdown) {
  auto j = std::make_shared<Journal>();
  EventRecorder rec;
  auto other = std::make_shared<Probe>("other", j);
  auto inner = ProcessManagerBuilder().name("inner").abandon_timeout(1h).shutdown_grace_period(1h).build();
  auto root = ProcessManagerBuilder().name("root").abandon_timeout(1h).on_event(rec.hook()).pre_insert(other).build();
  inner->insert(self_waiter("leaf", root, j, "rethrow"), ChildOptions{.shutdown_timeout = 50ms});
  root->insert(inner);
  Running run(root);
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(j->count("leaf aborted"), 1u);
  EXPECT_TRUE(has_event(rec, "root/inner/leaf", ChildState::stopped, "did not stop within its timeout; cancelled"))
      << story_of(rec, "root/inner/leaf");
}

// A nested manager that ends without failures throws nothing: its parent
// reads what did not stop in it from the manager itself.
TEST(core_review, not_stopped_of_a_nested_manager_that_ends_cleanly_reaches_the_roots_error) {
  auto j = std::make_shared<Journal>();
  auto stubborn = std::make_shared<Probe>("stubborn", j, Behaviour{.ignore_shutdown = true});
  auto direct = std::make_shared<Probe>("direct", j, Behaviour{.ignore_shutdown = true});
  auto bad = std::make_shared<pm::test::FailingService>("bad", "boom", /*on_trigger=*/true);
  auto inner = ProcessManagerBuilder().name("inner").abandon_timeout(1h).build();
  inner->insert(stubborn, ChildOptions{.shutdown_timeout = 20ms});
  auto root = ProcessManagerBuilder().name("root").abandon_timeout(1h).pre_insert(inner).pre_insert(bad).build();
  root->insert(direct, ChildOptions{.shutdown_timeout = 20ms});
  Running run(root);
  ASSERT_TRUE(run.wait_ready());
  send(bad, 1);
  auto pe = pm::test::process_error(run.finish());
  ASSERT_TRUE(pe);
  const auto& ns = pe->not_stopped();
  auto has = [&](const std::string& p) { return std::find(ns.begin(), ns.end(), p) != ns.end(); };
  std::string all;
  for (const auto& p : ns) all.append(p).append(" ");
  EXPECT_TRUE(has("root/direct")) << all;
  // "not_stopped(): paths of children that outstayed their timeout and were
  // cancelled or abandoned" ... "Nested errors are flattened".
  EXPECT_TRUE(has("root/inner/stubborn")) << "the nested child cancelled after its timeout is lost: " << all;
}

/// Ignores shutdown; once cancelled, journals "forced NAME" and stays until
/// `release` is set (a service that does not honour cancellation either).
std::shared_ptr<pm::Runnable> outstaying(const std::string& name, std::shared_ptr<Journal> j,
                                         std::shared_ptr<std::atomic<bool>> release) {
  return pm::make_runnable(name, [name, j, release](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    try {
      for (;;) co_await ctx.next_control();
    } catch (const boost::system::system_error&) {
      j->add("forced " + name);
    }
    co_await asio::this_coro::reset_cancellation_state();
    while (!release->load()) {
      timer.expires_after(1ms);
      co_await timer.async_wait(asio::use_awaitable);
    }
  });
}

TEST(core_review, a_child_added_while_the_manager_cancels_its_children_is_cancelled_too) {
  // The manager's grace has run out and it has cancelled every child; one
  // outstays that. A child added now is asked to stop and, as every other
  // child of this stop, cancelled: it does not run until the abandon bound.
  auto j = std::make_shared<Journal>();
  auto release = std::make_shared<std::atomic<bool>>(false);
  EventRecorder rec;
  auto m = ProcessManagerBuilder()
               .name("m")
               .shutdown_grace_period(10ms)
               .abandon_timeout(1h)
               .on_event(rec.hook())
               .pre_insert(outstaying("old", j, release))
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  run.stop();
  ASSERT_TRUE(j->wait_for("forced old"));
  m->add(std::make_shared<Probe>("late", j, Behaviour{.ignore_shutdown = true}));
  ASSERT_TRUE(j->wait_for("stop late"));
  EXPECT_TRUE(rec.wait_for([](const pm::Event& e) {
    return e.kind == EventKind::state && e.path == "m/late" && e.state == ChildState::stopped;
  })) << story_of(rec, "m/late");
  EXPECT_TRUE(has_event(rec, "m/late", ChildState::stopped, "did not stop within its timeout; cancelled"))
      << story_of(rec, "m/late");
  release->store(true);
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(core_review, a_sequential_self_waiter_started_last) {
  auto j = std::make_shared<Journal>();
  EventRecorder rec;
  auto first = std::make_shared<Probe>("first", j);
  auto m = ProcessManagerBuilder()
               .name("m")
               .start_order(pm::StartOrder::sequential)
               .abandon_timeout(1h)
               .on_event(rec.hook())
               .pre_insert(first)
               .build();
  m->insert(self_waiter("sw", m, j, "rethrow"), ChildOptions{.shutdown_timeout = 50ms});
  Running run(m);
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(j->count("sw aborted"), 1u);
  EXPECT_EQ(j->count("stop first"), 1u);
  EXPECT_TRUE(has_event(rec, "m/sw", ChildState::stopped, "did not stop within its timeout; cancelled"))
      << story_of(rec, "m/sw");
  // Reverse order: sw ended before first was told.
  auto lines = j->lines();
  auto pos = [&](const std::string& l) { return std::find(lines.begin(), lines.end(), l) - lines.begin(); };
  EXPECT_LT(pos("sw aborted"), pos("stop first"));
}

TEST(core_review, a_sequential_self_waiter_started_first_with_the_grace_period) {
  auto j = std::make_shared<Journal>();
  EventRecorder rec;
  auto second = std::make_shared<Probe>("second", j);
  auto m = ProcessManagerBuilder()
               .name("m")
               .start_order(pm::StartOrder::sequential)
               .shutdown_grace_period(50ms)
               .abandon_timeout(1h)
               .on_event(rec.hook())
               .build();
  m->insert(self_waiter("sw", m, j, "rethrow"));
  m->insert(second);
  Running run(m);
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(j->count("sw aborted"), 1u);
  EXPECT_TRUE(has_event(rec, "m/sw", ChildState::stopped, "did not stop within its timeout; cancelled"))
      << story_of(rec, "m/sw");
}

TEST(core_review, a_restart_supervised_self_waiter) {
  auto j = std::make_shared<Journal>();
  EventRecorder rec;
  auto other = std::make_shared<Probe>("other", j);
  auto m = ProcessManagerBuilder().name("m").abandon_timeout(1h).on_event(rec.hook()).pre_insert(other).build();
  auto sup =
      std::make_shared<pm::RestartSupervisor>(self_waiter("sw", m, j, "rethrow"), no_backoff(RestartPolicy::permanent));
  m->insert(sup, ChildOptions{.shutdown_timeout = 50ms});
  Running run(m);
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(j->count("sw aborted"), 1u);
  EXPECT_EQ(sup->restarts(), 0u);
  EXPECT_TRUE(has_event(rec, "m/sw", ChildState::stopped, "did not stop within its timeout; cancelled"))
      << story_of(rec, "m/sw");
}

TEST(core_review, a_blocking_service_awaiting_its_managers_shutdown_synchronously) {
  auto j = std::make_shared<Journal>();
  EventRecorder rec;
  auto other = std::make_shared<Probe>("other", j);
  auto m = ProcessManagerBuilder().name("m").abandon_timeout(1h).on_event(rec.hook()).pre_insert(other).build();
  auto io_box = std::make_shared<std::atomic<asio::io_context*>>(nullptr);
  auto io_set = std::make_shared<pm::test::Event>();
  std::weak_ptr<pm::ProcessManager> weak = m;
  auto returned = std::make_shared<pm::test::Event>();
  auto b = pm::make_blocking_runnable("b", [weak, io_box, io_set, j, returned](pm::BlockingContext&) {
    io_set->wait();
    auto t = weak.lock();
    auto* io = io_box->load();
    if (!t || io == nullptr) return;
    auto h = t->process_handle();
    t.reset();
    auto f = asio::co_spawn(*io, h->shutdown(), asio::use_future);
    try {
      f.get();  // a synchronous wait for its own tree's stop
      j->add("b completed");
    } catch (...) {
      j->add("b threw");
    }
    returned->set();
  });
  m->insert(b, ChildOptions{.shutdown_timeout = 50ms});
  {
    Running run(m);
    io_box->store(&run.io());
    io_set->set();
    EXPECT_EQ(run.finish(), nullptr);
    EXPECT_TRUE(returned->wait()) << "the blocking thread is still waiting";
  }
  EXPECT_EQ(j->count("b completed"), 1u);
  EXPECT_EQ(j->count("stop other"), 1u);
  EXPECT_TRUE(has_event(rec, "m/b", ChildState::stopped, "did not stop within its timeout; cancelled"))
      << story_of(rec, "m/b");
}

// ============================== 3. temporary children under group strategies

struct GroupTree {
  std::shared_ptr<Journal> j = std::make_shared<Journal>();
  EventRecorder rec;
  std::shared_ptr<Probe> a;
  std::shared_ptr<Probe> t;
  std::shared_ptr<Probe> b;
  std::shared_ptr<pm::ProcessManager> m;
  GroupTree(Strategy s, bool with_a, bool temp_throws, std::size_t max_restarts = 10) {
    ProcessManagerBuilder builder;
    builder.name("m").strategy(s).intensity(max_restarts, 1h).on_event(rec.hook());
    ChildOptions normal;
    normal.restart = no_backoff(RestartPolicy::permanent);
    ChildOptions temp;
    temp.restart = no_backoff(RestartPolicy::temporary);
    b = std::make_shared<Probe>("b", j);
    t = std::make_shared<Probe>("t", j, Behaviour{.throw_on_shutdown = temp_throws});
    // rest_for_one: b first, then t (and a) after it.
    builder.pre_insert(b, normal).pre_insert(t, temp);
    if (with_a) {
      a = std::make_shared<Probe>("a", j);
      builder.pre_insert(a, normal);
    }
    m = builder.build();
  }
};

void expect_group_restart_without_temp(GroupTree& g, Running& run, ChildState t_state) {
  ASSERT_TRUE(run.wait_ready());
  send(g.b, 2);  // b fails: the group stops and restarts, t leaves it
  ASSERT_TRUE(g.j->wait_for("start b", 2));
  if (g.a) {
    ASSERT_TRUE(g.j->wait_for("start a", 2));
  }
  ASSERT_TRUE(g.rec.wait_for([](const pm::Event& e) {
    return e.kind == EventKind::state && e.path == "m/t" &&
           (e.state == ChildState::stopped || e.state == ChildState::failed);
  }));
  EXPECT_TRUE(has_event(g.rec, "m/t", t_state, "temporary child; not restarted with its group"))
      << story_of(g.rec, "m/t");
  EXPECT_TRUE(run.wait_ready()) << "the manager becomes ready again without its temporary child";
  EXPECT_TRUE(g.m->is_ready());
  auto st = g.m->status();
  for (const auto& c : st.children) {
    EXPECT_NE(c.path, "m/t") << "the temporary child stays on the books";
  }
  EXPECT_EQ(st.children.size(), g.a ? 2u : 1u);
  EXPECT_EQ(g.j->count("start t"), 1u);
  for (const auto& c : st.children) {
    EXPECT_TRUE(c.ready) << c.path;
  }
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(core_review, one_for_all_temporary_child_leaves_the_group) {
  GroupTree g(Strategy::one_for_all, true, false);
  Running run(g.m);
  expect_group_restart_without_temp(g, run, ChildState::stopped);
}

TEST(core_review, one_for_all_temporary_child_that_throws_while_stopping) {
  GroupTree g(Strategy::one_for_all, true, true);
  Running run(g.m);
  expect_group_restart_without_temp(g, run, ChildState::failed);
}

TEST(core_review, one_for_all_temporary_child_is_the_only_other_member) {
  GroupTree g(Strategy::one_for_all, false, false);
  Running run(g.m);
  expect_group_restart_without_temp(g, run, ChildState::stopped);
}

TEST(core_review, rest_for_one_temporary_child_after_the_failed_one) {
  GroupTree g(Strategy::rest_for_one, true, true);
  Running run(g.m);
  expect_group_restart_without_temp(g, run, ChildState::failed);
}

TEST(core_review, one_for_all_intensity_runs_out_with_a_temporary_child_in_the_group) {
  GroupTree g(Strategy::one_for_all, true, true, /*max_restarts=*/0);
  Running run(g.m);
  ASSERT_TRUE(run.wait_ready());
  send(g.b, 2);  // one failure is already too many: the manager gives up
  auto pe = pm::test::process_error(run.finish());
  ASSERT_TRUE(pe);
  EXPECT_EQ(pe->process_name(), "m/b");
  EXPECT_NE(pe->reason().find("restart intensity exceeded"), std::string::npos) << pe->reason();
  for (const auto& f : pe->failures()) {
    EXPECT_NE(f.process_name, "m/t") << "a temporary child's failure while stopping failed the manager";
  }
  EXPECT_EQ(g.j->count("start b"), 1u);
}

TEST(core_review, one_for_all_temporary_group_member_then_second_round) {
  // After t has left, a second failure restarts the rest again.
  GroupTree g(Strategy::one_for_all, true, false);
  Running run(g.m);
  ASSERT_TRUE(run.wait_ready());
  send(g.b, 2);
  ASSERT_TRUE(g.j->wait_for("start a", 2));
  ASSERT_TRUE(run.wait_ready());
  send(g.a, 2);
  ASSERT_TRUE(g.j->wait_for("start a", 3));
  ASSERT_TRUE(g.j->wait_for("start b", 3));
  EXPECT_TRUE(run.wait_ready());
  EXPECT_EQ(g.j->count("start t"), 1u);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

// ================================================ 4. a handle that throws

class ThrowingHandle final : public pm::ProcessControlHandler {
 public:
  ThrowingHandle(std::shared_ptr<pm::ProcessControlHandler> inner, bool deliver)
      : inner_(std::move(inner)), deliver_(deliver) {}
  void control(pm::RuntimeControlMessage msg) override {
    calls.fetch_add(1);
    if (deliver_) inner_->control(std::move(msg));
    throw std::runtime_error("control() threw");
  }
  bool watch_readiness(std::function<void(bool)> fn) override { return inner_->watch_readiness(std::move(fn)); }
  std::atomic<int> calls{0};

 private:
  std::shared_ptr<pm::ProcessControlHandler> inner_;
  bool deliver_;
};

class Throwing : public pm::Runnable {
 public:
  Throwing(std::string name, std::shared_ptr<Journal> j, bool deliver, Behaviour b = {})
      : probe_(std::move(name), std::move(j), b),
        handle_(std::make_shared<ThrowingHandle>(probe_.process_handle(), deliver)) {}
  asio::awaitable<void> process_start() override { return probe_.process_start(); }
  std::string process_name() const override { return probe_.process_name(); }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return handle_; }
  ThrowingHandle& handle() { return *handle_; }

 private:
  Probe probe_;
  std::shared_ptr<ThrowingHandle> handle_;
};

TEST(core_review, a_throwing_handle_with_kept_messages_is_started_and_stopped) {
  for (bool deliver : {true, false}) {
    auto j = std::make_shared<Journal>();
    auto w = std::make_shared<Throwing>("w", j, deliver);
    auto ok = std::make_shared<Probe>("ok", j);
    auto m = ProcessManagerBuilder().name("m").shutdown_grace_period(50ms).abandon_timeout(1h).build();
    m->insert(w);
    m->insert(ok);
    // Kept for the run: a custom message, then a stop.
    m->process_handle()->control(pm::RuntimeControlMessage::custom(7));
    m->process_handle()->request_shutdown();
    Running run(m);
    EXPECT_EQ(run.finish(), nullptr) << "deliver=" << deliver;
    EXPECT_EQ(j->count("start w"), 1u) << "deliver=" << deliver;
    EXPECT_EQ(j->count("start ok"), 1u);
    EXPECT_EQ(j->count("stop ok"), 1u);
    EXPECT_GE(w->handle().calls.load(), 2);
  }
}

TEST(core_review, a_throwing_handle_added_while_stopping_is_started_and_stopped) {
  auto j = std::make_shared<Journal>();
  auto stubborn = std::make_shared<Probe>("stubborn", j, Behaviour{.ignore_shutdown = true});
  auto m = ProcessManagerBuilder().name("m").shutdown_grace_period(1h).pre_insert(stubborn).build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  run.stop();
  ASSERT_TRUE(j->wait_for("stop stubborn"));
  auto w = std::make_shared<Throwing>("w", j, true);
  m->add(w);
  ASSERT_TRUE(j->wait_for("stop w"));
  send(stubborn, 3);
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_EQ(j->count("start w"), 1u);
}

TEST(core_review, a_throwing_handle_under_one_for_all_restarts) {
  auto j = std::make_shared<Journal>();
  auto w = std::make_shared<Throwing>("w", j, true);
  auto b = std::make_shared<Probe>("b", j);
  ChildOptions opts;
  opts.restart = no_backoff(RestartPolicy::permanent);
  auto m = ProcessManagerBuilder().name("m").strategy(Strategy::one_for_all).intensity(10, 1h).build();
  m->insert(w, opts);
  m->insert(b, opts);
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  send(b, 2);  // w is told through its throwing handle, and restarts
  ASSERT_TRUE(j->wait_for("start w", 2));
  ASSERT_TRUE(j->wait_for("start b", 2));
  EXPECT_TRUE(run.wait_ready());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

// ============================================ 5. a torn-down manager

TEST(core_review, a_manager_whose_io_context_is_destroyed_is_not_ready_and_runs_again) {
  auto j = std::make_shared<Journal>();
  auto p = std::make_shared<Probe>("p", j);
  auto inner_p = std::make_shared<Probe>("ip", j);
  auto inner = ProcessManagerBuilder().name("inner").pre_insert(inner_p).build();
  auto m = ProcessManagerBuilder().name("m").pre_insert(p).pre_insert(inner).build();
  {
    asio::io_context io(2);
    auto work = asio::make_work_guard(io);
    asio::co_spawn(asio::make_strand(io), m->process_start(), asio::detached);
    std::thread t1([&io] { io.run(); });
    std::thread t2([&io] { io.run(); });
    EXPECT_TRUE(asio::co_spawn(io, m->wait_ready(pm::test::hang_guard), asio::use_future).get());
    EXPECT_TRUE(m->is_ready());
    io.stop();
    t1.join();
    t2.join();
  }
  EXPECT_FALSE(m->is_ready());
  EXPECT_FALSE(inner->is_ready());
  auto st = m->status();
  EXPECT_EQ(st.state, ChildState::stopped);
  EXPECT_FALSE(st.ready);
  EXPECT_TRUE(st.children.empty());
  EXPECT_FALSE(m->is_running());
  {
    asio::io_context io;
    EXPECT_FALSE(pm::test::run_coro(io, m->wait_ready(1h))) << "a stopped manager answers false at once";
  }
  Running run(m);
  EXPECT_TRUE(run.wait_ready());
  EXPECT_EQ(j->count("start p"), 2u);
  EXPECT_EQ(j->count("start ip"), 2u);
  EXPECT_TRUE(inner->is_ready());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

/// The manager runs on `io` (two threads) and is torn down while `foreign`
/// awaits it.
TEST(core_review, a_foreign_shutdown_waiter_when_the_managers_io_context_is_destroyed) {
  auto j = std::make_shared<Journal>();
  auto stubborn = std::make_shared<Probe>("stubborn", j, Behaviour{.ignore_shutdown = true});
  auto m = ProcessManagerBuilder().name("m").shutdown_grace_period(1h).pre_insert(stubborn).build();
  asio::io_context foreign;
  auto foreign_work = asio::make_work_guard(foreign);
  std::thread foreign_thread([&foreign] { foreign.run(); });
  std::future<std::string> stopped;
  {
    asio::io_context io(2);
    auto work = asio::make_work_guard(io);
    asio::co_spawn(asio::make_strand(io), m->process_start(), asio::detached);
    std::thread t1([&io] { io.run(); });
    EXPECT_TRUE(asio::co_spawn(io, m->wait_ready(pm::test::hang_guard), asio::use_future).get());
    stopped = asio::co_spawn(foreign, outcome(m->process_handle()->shutdown()), asio::use_future);
    EXPECT_TRUE(j->wait_for("stop stubborn"));
    io.stop();
    t1.join();
  }  // torn down mid-stop
  // The subtree has stopped (it is gone): shutdown() must complete, not
  // hang and not vanish.
  const auto status = stopped.wait_for(5s);
  std::string got = "hung";
  if (status == std::future_status::ready) {
    try {
      got = stopped.get();
    } catch (const std::exception& e) {
      got = std::string("the waiting coroutine was destroyed: ") + e.what();
    }
  }
  EXPECT_EQ(got, "completed");
  foreign_work.reset();
  foreign.stop();
  foreign_thread.join();
}

TEST(core_review, a_foreign_ready_waiter_when_the_managers_io_context_is_destroyed) {
  auto j = std::make_shared<Journal>();
  auto lazy = std::make_shared<Probe>("lazy", j, Behaviour{.defer_ready = true});
  auto m = ProcessManagerBuilder().name("m").pre_insert(lazy).build();
  asio::io_context foreign;
  auto foreign_work = asio::make_work_guard(foreign);
  std::thread foreign_thread([&foreign] { foreign.run(); });
  std::future<std::string> ready;
  {
    asio::io_context io(2);
    auto work = asio::make_work_guard(io);
    asio::co_spawn(asio::make_strand(io), m->process_start(), asio::detached);
    std::thread t1([&io] { io.run(); });
    EXPECT_TRUE(j->wait_for("start lazy"));
    auto strand = asio::make_strand(foreign);
    ready = asio::co_spawn(
        strand,
        [m, j]() -> asio::awaitable<std::string> {
          j->add("waiting");
          co_return co_await outcome(m->wait_ready(1h));
        },
        asio::use_future);
    EXPECT_TRUE(j->wait_for("waiting"));
    drain(strand);
    io.stop();
    t1.join();
  }
  EXPECT_FALSE(m->is_ready());
  // "false ... at once on a manager that has run and stopped": a waiter
  // already listed is not told.
  const auto status = ready.wait_for(5s);
  EXPECT_EQ(status, std::future_status::ready) << "wait_ready(1h) still waiting on a manager that is gone";
  if (status == std::future_status::ready) {
    EXPECT_EQ(ready.get(), "false");
  }
  foreign_work.reset();
  foreign.stop();  // also drops a waiter still suspended
  foreign_thread.join();
}

}  // namespace
