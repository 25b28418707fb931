// pm::systemd_notifier(): the notifier as a service of the tree it reports
// on, against a real unix datagram socket: it stops last, whatever options
// and order it is inserted with, run after run, and holds no reference.
#include <processmanager/systemd.hpp>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "notify_listener.hpp"
#include "stop_support.hpp"

namespace {

using namespace pm::test::stops;
using pm::test::NotifyListener;

// ---------------------------------------------------------------------------
// 2. systemd_notifier

std::string sock(const std::string& tag) { return "/tmp/pm-tree-" + std::to_string(getpid()) + "-" + tag + ".sock"; }

/// Every datagram sent so far, once the listener has them all: a datagram
/// of our own, sent after them, is queued behind them.
std::vector<std::string> drained(const NotifyListener& sd) {
  static std::atomic<int> n{0};
  const std::string mark = "TREE-DRAIN-" + std::to_string(++n);
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, sd.where().data(), sd.where().size());
  (void)::sendto(fd, mark.data(), mark.size(), 0, reinterpret_cast<const sockaddr*>(&a),
                 static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + sd.where().size() + 1));
  ::close(fd);
  const auto at = sd.wait_for_text(mark);
  EXPECT_GE(at, 0);
  auto msgs = sd.messages();
  if (at >= 0) msgs.resize(static_cast<std::size_t>(at));
  return msgs;
}

// A stop sent before the run: the notifier must still be told last (its
// last word: only itself left running).
TEST(systemd_in_tree, notifier_when_the_stop_was_sent_before_the_run) {
  NotifyListener sd(sock("early"));
  auto j = std::make_shared<Journal>();
  auto slow = std::make_shared<Svc>("slow", j, SvcOpts{.linger = 150ms});
  auto m = ProcessManagerBuilder()
               .name("app")
               .pre_insert_with(pm::systemd_notifier({.socket = sd.where(), .extend_interval = 20ms}))
               .pre_insert(slow)
               .build();
  m->process_handle()->request_shutdown();
  Running run(m);
  EXPECT_EQ(run.finish(), nullptr);
  const auto msgs = drained(sd);
  ASSERT_FALSE(msgs.empty());
  EXPECT_NE(msgs.back().find("1 of 1 services running"), std::string::npos) << joined(msgs);
}

TEST(systemd_in_tree, notifier_with_explicit_options_still_stops_last) {
  NotifyListener sd(sock("opts"));
  auto j = std::make_shared<Journal>();
  EventRecorder rec;
  auto slow = std::make_shared<Svc>("slow", j, SvcOpts{.linger = 150ms});
  auto m = ProcessManagerBuilder()
               .name("app")
               .on_event(rec.hook())
               .pre_insert_with(pm::systemd_notifier({.socket = sd.where(), .extend_interval = 20ms}),
                                ChildOptions{.shutdown_timeout = 1ms})
               .pre_insert(slow)
               .build();
  Running run(m);
  ASSERT_GE(sd.wait_for_text("READY=1"), 0);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  const auto events = rec.events();
  const auto slow_done = event_index(events, "app/slow", EventKind::state, ChildState::stopped);
  const auto told = event_index(events, "app/systemd", EventKind::state, ChildState::stopping);
  ASSERT_GE(slow_done, 0);
  EXPECT_GT(told, slow_done);
  EXPECT_EQ(event_index(events, "app/systemd", EventKind::abandoned), -1);
  const auto msgs = drained(sd);
  ASSERT_FALSE(msgs.empty());
  EXPECT_NE(msgs.back().find("STATUS=stopping: 1 of 1 services running"), std::string::npos) << joined(msgs);
}

TEST(systemd_in_tree, notifier_first_in_a_sequential_tree_stops_last) {
  NotifyListener sd(sock("seq"));
  auto j = std::make_shared<Journal>();
  EventRecorder rec;
  auto m = ProcessManagerBuilder()
               .name("app")
               .start_order(StartOrder::sequential)
               .on_event(rec.hook())
               .pre_insert_with(pm::systemd_notifier({.socket = sd.where(), .extend_interval = 20ms}))
               .pre_insert(std::make_shared<Svc>("a", j, SvcOpts{.linger = 60ms}))
               .pre_insert(std::make_shared<Svc>("b", j, SvcOpts{.linger = 60ms}))
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  ASSERT_GE(sd.wait_for_text("READY=1"), 0);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  const auto events = rec.events();
  const auto told = event_index(events, "app/systemd", EventKind::state, ChildState::stopping);
  EXPECT_GT(told, event_index(events, "app/a", EventKind::state, ChildState::stopped));
  EXPECT_GT(event_index(events, "app/a", EventKind::state, ChildState::stopping),
            event_index(events, "app/b", EventKind::state, ChildState::stopped));
  const auto msgs = drained(sd);
  ASSERT_FALSE(msgs.empty());
  EXPECT_NE(msgs.back().find("1 of 1 services running"), std::string::npos) << joined(msgs);
}

TEST(systemd_in_tree, notifier_counts_as_a_service) {
  NotifyListener sd(sock("count"));
  auto j = std::make_shared<Journal>();
  auto m = ProcessManagerBuilder()
               .name("app")
               .pre_insert_with(pm::systemd_notifier({.socket = sd.where()}))
               .pre_insert(std::make_shared<Svc>("w", j))
               .build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  EXPECT_EQ(m->health().services, 2u);
  EXPECT_EQ(m->health().ready_services, 2u);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(systemd_in_tree, notifier_tree_run_twice_notifies_ready_and_stopping_each_time) {
  NotifyListener sd(sock("twice"));
  auto j = std::make_shared<Journal>();
  auto m = ProcessManagerBuilder()
               .name("app")
               .pre_insert_with(pm::systemd_notifier({.socket = sd.where(), .extend_interval = 20ms}))
               .pre_insert(std::make_shared<Svc>("w", j, SvcOpts{.linger = 30ms}))
               .build();
  std::size_t from = 0;
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    Running run(m);
    const auto ready = sd.wait_for_text("READY=1", from);
    ASSERT_GE(ready, 0) << joined(sd.messages());
    // No STOPPING=1 between the start of this run and its READY=1.
    const auto msgs = sd.messages();
    for (std::size_t i = from; i < static_cast<std::size_t>(ready); ++i) {
      EXPECT_EQ(msgs[i].find("STOPPING=1"), std::string::npos) << joined(msgs);
    }
    ASSERT_TRUE(run.wait_ready());
    run.stop();
    const auto stopping = sd.wait_for_text("STOPPING=1", static_cast<std::size_t>(ready) + 1);
    ASSERT_GT(stopping, ready);
    EXPECT_EQ(run.finish(), nullptr);
    from = sd.messages().size();
  }
}

TEST(systemd_in_tree, notifier_in_a_failing_tree_sends_stopping_and_is_told_last) {
  NotifyListener sd(sock("fail"));
  auto j = std::make_shared<Journal>();
  EventRecorder rec;
  auto bad = std::make_shared<Svc>("bad", j);
  auto slow = std::make_shared<Svc>("slow", j, SvcOpts{.linger = 100ms});
  auto m = ProcessManagerBuilder()
               .name("app")
               .on_event(rec.hook())
               .pre_insert(slow)
               .pre_insert(bad)
               .pre_insert_with(pm::systemd_notifier({.socket = sd.where(), .extend_interval = 20ms}))
               .build();
  Running run(m);
  const auto ready = sd.wait_for_text("READY=1");
  ASSERT_GE(ready, 0);
  send(bad, 2);
  auto pe = process_error(run.finish());
  ASSERT_TRUE(pe);
  EXPECT_EQ(pe->process_name(), "app/bad");
  EXPECT_GT(sd.wait_for_text("STOPPING=1", static_cast<std::size_t>(ready)), ready) << joined(sd.messages());
  const auto events = rec.events();
  EXPECT_GT(event_index(events, "app/systemd", EventKind::state, ChildState::stopping),
            event_index(events, "app/slow", EventKind::state, ChildState::stopped));
}

TEST(systemd_in_tree, notifier_without_socket_tree_run_twice) {
  unsetenv("NOTIFY_SOCKET");
  unsetenv("WATCHDOG_USEC");
  auto j = std::make_shared<Journal>();
  auto slow = std::make_shared<Svc>("w", j, SvcOpts{.linger = 50ms});
  EventRecorder rec;
  auto m = ProcessManagerBuilder()
               .name("app")
               .on_event(rec.hook())
               .pre_insert_with(pm::systemd_notifier())
               .pre_insert(slow)
               .build();
  for (int round = 1; round <= 3; ++round) {
    Running run(m);
    // A manager between runs has stopped as far as wait_ready() can tell:
    // wait until this run has begun.
    ASSERT_TRUE(j->wait_for("start w", static_cast<std::size_t>(round))) << "round " << round;
    ASSERT_TRUE(run.wait_ready(10s)) << "round " << round;
    run.stop();
    EXPECT_EQ(run.finish(), nullptr);
  }
  // Every round: the notifier told after w had stopped.
  const auto events = rec.events();
  int told = 0;
  bool w_stopped = false;
  for (const auto& e : events) {
    if (e.kind != EventKind::state || !e.state) continue;
    if (e.path == "app/w" && *e.state == ChildState::stopped) w_stopped = true;
    if (e.path == "app/w" && *e.state == ChildState::starting) w_stopped = false;
    if (e.path == "app/systemd" && *e.state == ChildState::stopping) {
      EXPECT_TRUE(w_stopped) << "notifier told before w stopped";
      ++told;
    }
  }
  EXPECT_EQ(told, 3);
}

TEST(systemd_in_tree, notifier_tree_is_freed_after_a_run) {
  NotifyListener sd(sock("free"));
  std::weak_ptr<pm::ProcessManager> weak;
  {
    auto j = std::make_shared<Journal>();
    auto m = ProcessManagerBuilder()
                 .name("app")
                 .pre_insert_with(pm::systemd_notifier({.socket = sd.where()}))
                 .pre_insert(std::make_shared<Svc>("w", j))
                 .build();
    weak = m;
    {
      Running run(m);
      ASSERT_TRUE(run.wait_ready());
      run.stop();
      EXPECT_EQ(run.finish(), nullptr);
    }
  }
  EXPECT_TRUE(weak.expired()) << "the tree outlived its last user reference";
}

TEST(systemd_in_tree, notifier_tree_whose_io_context_is_destroyed_mid_run) {
  NotifyListener sd(sock("teardown"));
  std::weak_ptr<pm::ProcessManager> weak;
  auto j = std::make_shared<Journal>();
  auto m = ProcessManagerBuilder()
               .name("app")
               .pre_insert_with(pm::systemd_notifier({.socket = sd.where(), .extend_interval = 20ms}))
               .pre_insert(std::make_shared<Svc>("w", j))
               .build();
  weak = m;
  {
    asio::io_context io(2);
    asio::co_spawn(asio::make_strand(io), m->process_start(), asio::detached);
    std::thread t([&] { io.run(); });
    EXPECT_GE(sd.wait_for_text("READY=1"), 0);
    io.stop();
    t.join();
  }
  EXPECT_FALSE(m->is_running());
  // It runs again, and reports READY=1 again.
  const auto before = sd.messages().size();
  {
    Running run(m);
    EXPECT_GE(sd.wait_for_text("READY=1", before), 0) << joined(sd.messages());
    ASSERT_TRUE(run.wait_ready(10s));
    run.stop();
    EXPECT_EQ(run.finish(), nullptr);
  }
  m.reset();
  EXPECT_TRUE(weak.expired());
}

TEST(systemd_in_tree, notifier_tree_dropped_by_its_user_then_io_context_destroyed) {
  NotifyListener sd(sock("drop"));
  std::weak_ptr<pm::ProcessManager> weak;
  {
    auto j = std::make_shared<Journal>();
    auto m = ProcessManagerBuilder()
                 .name("app")
                 .pre_insert_with(pm::systemd_notifier({.socket = sd.where(), .extend_interval = 20ms}))
                 .pre_insert(std::make_shared<Svc>("w", j))
                 .build();
    weak = m;
    asio::io_context io(2);
    asio::co_spawn(asio::make_strand(io), m->process_start(), asio::detached);
    std::thread t([&] { io.run(); });
    EXPECT_GE(sd.wait_for_text("READY=1"), 0);
    io.stop();
    t.join();
    m.reset();  // the frames on `io` are the last owners now
  }
  EXPECT_TRUE(weak.expired());
}

TEST(systemd_in_tree, notifier_sends_reloading_then_ready) {
  NotifyListener sd(sock("reload"));
  auto j = std::make_shared<Journal>();
  auto m = ProcessManagerBuilder()
               .name("app")
               .pre_insert_with(pm::systemd_notifier({.socket = sd.where()}))
               .pre_insert(std::make_shared<Svc>("w", j))
               .build();
  Running run(m);
  const auto ready = sd.wait_for_text("READY=1");
  ASSERT_GE(ready, 0);
  ASSERT_TRUE(run.wait_ready());
  m->reload_blocking();
  const auto reloading = sd.wait_for_text("RELOADING=1", static_cast<std::size_t>(ready) + 1);
  ASSERT_GT(reloading, ready) << joined(sd.messages());
  EXPECT_GT(sd.wait_for_text("READY=1", static_cast<std::size_t>(reloading) + 1), reloading) << joined(sd.messages());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(systemd_in_tree, notifier_empty_name_and_bad_options) {
  EXPECT_THROW((void)pm::systemd_notifier({}, ""), std::invalid_argument);
  try {
    (void)ProcessManagerBuilder()
        .name("tree-x")
        .pre_insert_with(pm::systemd_notifier({.socket = "@x", .extend_interval = 0ms}))
        .build();
    ADD_FAILURE() << "a zero extend_interval was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("tree-x"), std::string::npos) << e.what();
  }
  try {
    (void)ProcessManagerBuilder()
        .name("tree-y")
        .pre_insert_with(pm::systemd_notifier({.socket = "@x", .watchdog = std::chrono::microseconds(-1)}))
        .build();
    ADD_FAILURE() << "a negative watchdog was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("tree-y"), std::string::npos) << e.what();
  }
}

// Added with add() (not the builder), with options: still stops last.
TEST(systemd_in_tree, notifier_added_with_add_and_options_stops_last) {
  NotifyListener sd(sock("add"));
  auto j = std::make_shared<Journal>();
  EventRecorder rec;
  auto slow = std::make_shared<Svc>("slow", j, SvcOpts{.linger = 100ms});
  auto m = ProcessManagerBuilder().name("app").on_event(rec.hook()).pre_insert(slow).build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  auto factory = pm::systemd_notifier({.socket = sd.where()});
  m->add(factory(m), ChildOptions{.shutdown_timeout = 1ms});
  ASSERT_GE(sd.wait_for_text("READY=1"), 0);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
  const auto events = rec.events();
  EXPECT_GT(event_index(events, "app/systemd", EventKind::state, ChildState::stopping),
            event_index(events, "app/slow", EventKind::state, ChildState::stopped));
}

}  // namespace
