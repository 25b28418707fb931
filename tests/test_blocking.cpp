#include <processmanager/builtin/blocking.hpp>

#include <gtest/gtest.h>

#include <array>
#include <future>
#include <memory>

#include "support.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;
using pm::BlockingContext;
using pm::test::run_coro;

std::exception_ptr run_tree(const std::shared_ptr<pm::ProcessManager>& m, const std::function<void()>& once_running,
                            std::size_t threads = 2) {
  asio::io_context io(static_cast<int>(threads));
  std::exception_ptr error;
  bool done = false;
  asio::co_spawn(asio::make_strand(io), m->process_start(), [&](std::exception_ptr e) {
    error = e;
    done = true;
  });
  if (once_running) asio::post(io, once_running);
  pm::test::run_io(io, threads);
  EXPECT_TRUE(done);
  return error;
}

TEST(blocking, a_return_is_success_and_runs_on_its_own_thread) {
  std::thread::id ran_on;
  auto svc = pm::make_blocking_runnable("once", [&ran_on](BlockingContext& ctx) {
    ran_on = std::this_thread::get_id();
    EXPECT_EQ(ctx.name(), "once");
  });
  EXPECT_NO_THROW(run_coro(svc->process_start()));
  EXPECT_NE(ran_on, std::this_thread::get_id());
}

TEST(blocking, an_exception_is_a_failure_reported_with_the_services_name) {
  auto m = pm::ProcessManagerBuilder()
               .name("root")
               .pre_insert(pm::make_blocking_runnable(
                   "poller", [](BlockingContext&) { throw std::runtime_error("device gone"); }))
               .build();
  auto error = run_tree(m, {});
  try {
    std::rethrow_exception(error);
  } catch (const pm::ProcessError& e) {
    EXPECT_EQ(e.process_name(), "root/poller");
    EXPECT_EQ(pm::describe(e.cause()), "device gone");
  }
}

TEST(blocking, shutdown_requests_the_stop_token_and_wakes_waits) {
  std::atomic<bool> waiting{false};
  std::atomic<bool> stopped_by_token{false};
  auto svc = pm::make_blocking_runnable("sleeper", [&](BlockingContext& ctx) {
    waiting = true;
    while (!ctx.stop_requested()) ctx.wait_for(std::chrono::hours(1));
    stopped_by_token = true;
  });
  auto m = pm::ProcessManagerBuilder().pre_insert(svc).build();
  std::thread stopper([&] {
    while (!waiting) std::this_thread::yield();
    m->process_handle()->request_shutdown();
  });
  EXPECT_EQ(run_tree(m, {}), nullptr);
  stopper.join();
  EXPECT_TRUE(stopped_by_token);
}

TEST(blocking, reload_and_custom_messages_reach_the_thread_in_order) {
  std::vector<std::string> seen;
  auto svc = pm::make_blocking_runnable("listener", [&seen](BlockingContext& ctx) {
    for (;;) {
      auto msg = ctx.next_control(std::chrono::hours(1));
      if (!msg) continue;
      seen.emplace_back(pm::to_string(msg->kind()));
      if (msg->is_shutdown()) return;
    }
  });
  auto h = svc->process_handle();
  h->request_reload();
  h->control(pm::RuntimeControlMessage::custom(7));
  h->request_shutdown();
  EXPECT_NO_THROW(run_coro(svc->process_start()));
  EXPECT_EQ(seen, (std::vector<std::string>{"reload", "custom", "shutdown"}));
}

TEST(blocking, next_control_times_out_with_nothing) {
  auto svc = pm::make_blocking_runnable("quiet", [](BlockingContext& ctx) {
    if (ctx.next_control(1ms)) throw std::runtime_error("a message out of nowhere");
    if (!ctx.wait_for(1ms)) throw std::runtime_error("woken for nothing");
  });
  EXPECT_NO_THROW(run_coro(svc->process_start()));
}

TEST(blocking, a_thread_that_ignores_its_stop_token_is_abandoned_and_the_manager_completes) {
  std::atomic<bool> release{false};
  pm::test::Event running;
  pm::test::Event finished;
  auto svc = pm::make_blocking_runnable("stuck", [&](BlockingContext&) {
    running.set();
    while (!release) std::this_thread::yield();  // ignores everything
    finished.set();
  });
  std::vector<pm::Event> events;
  std::mutex mu;
  auto m = pm::ProcessManagerBuilder()
               .name("root")
               .shutdown_grace_period(50ms)
               .on_event([&](const pm::Event& e) {
                 std::lock_guard lock(mu);
                 events.push_back(e);
               })
               .pre_insert(svc)
               .build();
  std::thread stopper([&] {
    running.wait();
    m->process_handle()->request_shutdown();
  });
  auto error = run_tree(m, {});
  stopper.join();
  // Abandoned after its grace, like a coroutine that is cancelled: a child
  // that did not stop, not a failure of its own.
  EXPECT_EQ(error, nullptr);
  bool reported = false;
  for (const auto& e : events) {
    if (e.path != "root/stuck" || e.kind != pm::EventKind::state || e.state != pm::ChildState::stopped) continue;
    reported = true;
    EXPECT_THROW(std::rethrow_exception(e.cause), pm::AbandonedError);
  }
  EXPECT_TRUE(reported);
  release = true;  // let the abandoned thread end before the test's locals go
  EXPECT_TRUE(finished.wait());
}

// Issue 12, item 1: the thread used to release its counted work after
// posting the completion, so once the manager had completed and the owner
// stopped and destroyed the io_context, the thread could still touch it
// (AddressSanitizer: heap-use-after-free in scheduler::work_finished). The
// io_context is on the heap so that AddressSanitizer sees every late touch.
TEST(blocking, the_thread_never_touches_an_io_context_stopped_and_destroyed_after_the_manager_completed) {
  for (int i = 0; i < 300; ++i) {
    auto io = std::make_unique<asio::io_context>(1);
    auto work = asio::make_work_guard(*io);
    // Several threads completing at once widen the window: the last
    // completion ends the manager while the others are still in complete().
    constexpr int services = 6;
    std::array<pm::test::Event, services> waiting;
    auto builder = pm::ProcessManagerBuilder().name("root");
    for (auto& w : waiting) {
      builder.pre_insert(pm::make_blocking_runnable("waiter", [&w](BlockingContext& ctx) {
        w.set();
        while (!ctx.stop_requested()) ctx.wait_for(1s);
      }));
    }
    auto m = builder.build();
    auto done = asio::co_spawn(*io, m->process_start(), asio::use_future);
    std::thread runner([&io] { io->run(); });
    for (auto& w : waiting) ASSERT_TRUE(w.wait());
    m->process_handle()->request_shutdown();
    ASSERT_EQ(done.wait_for(pm::test::hang_guard), std::future_status::ready);
    EXPECT_NO_THROW(done.get());
    io->stop();
    runner.join();
    work.reset();
    io.reset();  // the blocking thread may still be finishing: it must not be in here
  }
}

TEST(blocking, runs_again_after_it_ended) {
  std::atomic<int> runs{0};
  auto svc = pm::make_blocking_runnable("again", [&runs](BlockingContext&) { runs.fetch_add(1); });
  run_coro(svc->process_start());
  run_coro(svc->process_start());
  EXPECT_EQ(runs, 2);
  EXPECT_THROW(pm::make_blocking_runnable("empty", nullptr), std::invalid_argument);
}

}  // namespace
