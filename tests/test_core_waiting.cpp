// The core's promises about waiting: wait_ready(), shutdown() and reload()
// awaited from anywhere (a foreign io_context, a cancelled coroutine, a
// child of the manager itself), and a manager's handle that awaits its
// children's handles. docs/supervision.md states each promise.
#include <processmanager/processmanager.hpp>

#include <gtest/gtest.h>

#include <future>

#include "lifecycle_support.hpp"

namespace {

using namespace pm::test::lifecycle;

// ---------------------------------------------- 9. a foreign io_context

TEST(core_waiters, a_waiter_whose_io_context_is_destroyed_first_is_never_touched) {
  auto j = std::make_shared<Journal>();
  auto lazy = std::make_shared<Probe>("lazy", j, Behaviour{.defer_ready = true});
  auto stubborn = std::make_shared<Probe>("stubborn", j, Behaviour{.ignore_shutdown = true});
  auto m = ProcessManagerBuilder().name("m").pre_insert(lazy).pre_insert(stubborn).shutdown_grace_period(50ms).build();
  Running run(m);
  ASSERT_TRUE(j->wait_for("start stubborn"));
  {
    asio::io_context foreign;
    std::atomic<int> suspended{0};
    asio::co_spawn(
        foreign,
        [m, &suspended]() -> asio::awaitable<void> {
          ++suspended;
          (void)co_await m->wait_ready(1h);
        },
        asio::detached);
    asio::co_spawn(
        foreign,
        [m, &suspended]() -> asio::awaitable<void> {
          ++suspended;
          co_await m->process_handle()->shutdown();
        },
        asio::detached);
    while (suspended.load() < 2) foreign.run_one();
    foreign.poll();
  }  // destroyed with both coroutines suspended in the manager's lists
  // The stop (already asked) completes: readiness waiters hear "false",
  // shutdown waiters "stopped", none of them on the dead io_context.
  EXPECT_EQ(run.finish(), nullptr);
}

// ------------------------------- 11. the manager's handle awaits its children

class SlowReloadHandle final : public pm::ProcessControlHandler {
 public:
  explicit SlowReloadHandle(std::shared_ptr<pm::ProcessControlHandler> inner) : inner_(std::move(inner)) {}
  void control(pm::RuntimeControlMessage msg) override { inner_->control(std::move(msg)); }
  bool watch_readiness(std::function<void(bool)> fn) override { return inner_->watch_readiness(std::move(fn)); }
  asio::awaitable<void> reload() override {
    began.fetch_add(1);
    asio::steady_timer pace(co_await asio::this_coro::executor);
    while (!release.load()) {
      pace.expires_after(1ms);  // pacing while the test holds it
      co_await pace.async_wait(asio::use_awaitable);
    }
    inner_->request_reload();
    ended.fetch_add(1);
  }
  std::atomic<int> began{0};
  std::atomic<int> ended{0};
  std::atomic<bool> release{false};

 private:
  std::shared_ptr<pm::ProcessControlHandler> inner_;
};

class SlowReloader : public pm::Runnable {
 public:
  SlowReloader(std::string name, std::shared_ptr<Journal> j)
      : probe_(std::move(name), std::move(j)), handle_(std::make_shared<SlowReloadHandle>(probe_.process_handle())) {}
  asio::awaitable<void> process_start() override { return probe_.process_start(); }
  std::string process_name() const override { return probe_.process_name(); }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return handle_; }
  SlowReloadHandle& handle() { return *handle_; }

 private:
  Probe probe_;
  std::shared_ptr<SlowReloadHandle> handle_;
};

TEST(core_control, a_managers_reload_awaits_every_childs_own_reload_concurrently) {
  auto j = std::make_shared<Journal>();
  auto a = std::make_shared<SlowReloader>("a", j);
  auto b = std::make_shared<SlowReloader>("b", j);
  auto inner = ProcessManagerBuilder().name("inner").pre_insert(b).build();
  auto m = ProcessManagerBuilder().name("m").pre_insert(a).pre_insert(inner).build();
  Running run(m);
  ASSERT_TRUE(run.wait_ready());
  auto done = asio::co_spawn(run.io(), m->process_handle()->reload(), asio::use_future);
  // Both reloads are under way at once (b's through the nested manager),
  // and the manager's reload waits for them.
  while (a->handle().began.load() == 0 || b->handle().began.load() == 0) std::this_thread::yield();
  EXPECT_EQ(done.wait_for(20ms), std::future_status::timeout) << "reload() completed before its children's";
  a->handle().release = true;
  b->handle().release = true;
  done.get();
  EXPECT_EQ(a->handle().ended.load(), 1);
  EXPECT_EQ(b->handle().ended.load(), 1);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

// ------------------------------------------ terminal cancellation ends a wait

/// Awaits `what` in a coroutine of its own on `strand`, cancelled through
/// `signal`; says "completed", "aborted" or "other".
template <class Awaitable>
std::future<std::string> await_cancellable(const asio::strand<asio::io_context::executor_type>& strand,
                                           asio::cancellation_signal& signal, Awaitable what,
                                           const std::shared_ptr<Journal>& j, const std::string& marker) {
  auto done = std::make_shared<std::promise<std::string>>();
  auto result = done->get_future();
  asio::co_spawn(
      strand,
      [what = std::move(what), j, marker]() mutable -> asio::awaitable<std::string> {
        j->add(marker);  // on the strand, in the same handler that then suspends
        try {
          co_await std::move(what);
          co_return "completed";
        } catch (const boost::system::system_error& e) {
          co_return e.code() == asio::error::operation_aborted ? "aborted" : "other";
        }
      },
      asio::bind_cancellation_slot(
          signal.slot(), [done](const std::exception_ptr&, std::string r) { done->set_value(std::move(r)); }));
  return result;
}

/// Emits a terminal cancellation on `strand`, where the signal is used.
void cancel_on(const asio::strand<asio::io_context::executor_type>& strand, asio::cancellation_signal& signal) {
  asio::post(strand, [&signal] { signal.emit(asio::cancellation_type::terminal); });
}

TEST(core_waiters, wait_ready_shutdown_and_reload_end_with_operation_aborted_on_terminal_cancellation) {
  auto j = std::make_shared<Journal>();
  auto lazy = std::make_shared<Probe>("lazy", j, Behaviour{.defer_ready = true});  // never ready
  auto stubborn = std::make_shared<Probe>("stubborn", j, Behaviour{.ignore_shutdown = true});
  auto slow = std::make_shared<SlowReloader>("slow", j);
  auto m = ProcessManagerBuilder()
               .name("m")
               .shutdown_grace_period(std::chrono::hours(1))
               .pre_insert(lazy)
               .pre_insert(stubborn)
               .pre_insert(slow)
               .build();
  Running run(m);
  ASSERT_TRUE(j->wait_for("start stubborn"));
  ASSERT_TRUE(j->wait_for("start slow"));
  auto strand = asio::make_strand(run.io());

  asio::cancellation_signal s1;
  auto ready = await_cancellable(strand, s1, m->wait_ready(std::chrono::hours(1)), j, "awaiting ready");
  ASSERT_TRUE(j->wait_for("awaiting ready"));
  cancel_on(strand, s1);
  ASSERT_EQ(ready.wait_for(pm::test::hang_guard), std::future_status::ready);
  EXPECT_EQ(ready.get(), "aborted");

  asio::cancellation_signal s2;
  auto reloaded = await_cancellable(strand, s2, m->process_handle()->reload(), j, "awaiting reload");
  ASSERT_TRUE(j->wait_for("awaiting reload"));
  while (slow->handle().began.load() == 0) std::this_thread::yield();
  cancel_on(strand, s2);
  ASSERT_EQ(reloaded.wait_for(pm::test::hang_guard), std::future_status::ready);
  EXPECT_EQ(reloaded.get(), "aborted");
  slow->handle().release = true;  // the reload itself goes on, and ends

  asio::cancellation_signal s3;
  auto stopped = await_cancellable(strand, s3, m->process_handle()->shutdown(), j, "awaiting shutdown");
  ASSERT_TRUE(j->wait_for("stop stubborn"));  // the stop is under way, held up by stubborn
  cancel_on(strand, s3);
  ASSERT_EQ(stopped.wait_for(pm::test::hang_guard), std::future_status::ready);
  EXPECT_EQ(stopped.get(), "aborted");
  EXPECT_FALSE(m->status().children.empty()) << "cancelling the wait does not cancel the stop's subject";

  send(stubborn, 3);
  // Ends, and the io_context runs out of work: no wait_ready timer of an
  // hour is left armed behind the cancelled wait.
  EXPECT_EQ(run.finish(), nullptr);
}

// -------------------------------------------------- 10. waiting for itself

TEST(core_waiters, a_child_awaiting_its_own_managers_shutdown_is_cancelled_at_its_timeout) {
  auto j = std::make_shared<Journal>();
  EventRecorder rec;
  auto other = std::make_shared<Probe>("other", j);
  // An abandon bound of an hour: if the wait ignored the cancellation, the
  // child would be waited for that long (the test's hang guard fails first).
  auto m = ProcessManagerBuilder()
               .name("m")
               .abandon_timeout(std::chrono::hours(1))
               .on_event(rec.hook())
               .pre_insert(other)
               .build();
  std::weak_ptr<pm::ProcessManager> weak = m;
  auto caught = std::make_shared<std::promise<std::string>>();
  auto self_waiter = pm::make_runnable("self-waiter", [weak, caught](pm::RuntimeContext&) -> asio::awaitable<void> {
    auto tree = weak.lock();
    if (!tree) co_return;
    try {
      co_await tree->process_handle()->shutdown();
      caught->set_value("completed");
    } catch (const boost::system::system_error& e) {
      caught->set_value(e.code() == asio::error::operation_aborted ? "aborted" : "other");
      throw;
    }
  });
  m->insert(self_waiter, ChildOptions{.shutdown_timeout = 50ms});
  Running run(m);
  EXPECT_EQ(run.finish(), nullptr);  // a child cancelled at its timeout is not a failure
  auto answer = caught->get_future();
  ASSERT_EQ(answer.wait_for(pm::test::hang_guard), std::future_status::ready);
  EXPECT_EQ(answer.get(), "aborted");
  EXPECT_EQ(j->count("stop other"), 1u);
  bool reported = false;
  for (const auto& e : rec.events()) {
    if (e.kind == EventKind::state && e.path == "m/self-waiter" && e.state == ChildState::stopped &&
        e.detail == "did not stop within its timeout; cancelled") {
      reported = true;
    }
  }
  EXPECT_TRUE(reported) << "the child is reported as not stopped in time";
}

}  // namespace
