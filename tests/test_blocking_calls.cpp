// The blocking forms of wait_ready(), shutdown() and reload(): they work
// from a plain thread while the manager runs on a multi-threaded
// io_context, and refuse, rather than deadlock, on a thread of the
// manager's own io_context.
#include <processmanager/process_manager.hpp>

#include <gtest/gtest.h>

#include <future>
#include <string>

#include "lifecycle_support.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;
using pm::ProcessManagerBuilder;
using pm::test::Behaviour;
using pm::test::Journal;
using pm::test::Probe;
using pm::test::Running;

/// A guard's handle whose reload() takes a trip through the executor before
/// it ends: a manager's reload() awaits it, and so must reload_blocking().
class LateReloadHandle final : public pm::ProcessControlHandler {
 public:
  explicit LateReloadHandle(std::shared_ptr<pm::ProcessControlHandler> inner) : inner_(std::move(inner)) {}
  void control(pm::RuntimeControlMessage msg) override { inner_->control(std::move(msg)); }
  bool watch_readiness(std::function<void(bool)> fn) override { return inner_->watch_readiness(std::move(fn)); }
  asio::awaitable<void> reload() override {
    co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    inner_->request_reload();
    ended.fetch_add(1);
  }
  std::atomic<int> ended{0};

 private:
  std::shared_ptr<pm::ProcessControlHandler> inner_;
};

class LateReloader : public pm::Runnable {
 public:
  LateReloader(std::string name, std::shared_ptr<Journal> j)
      : probe_(std::move(name), std::move(j)), handle_(std::make_shared<LateReloadHandle>(probe_.process_handle())) {}
  asio::awaitable<void> process_start() override { return probe_.process_start(); }
  std::string process_name() const override { return probe_.process_name(); }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return handle_; }
  LateReloadHandle& handle() { return *handle_; }

 private:
  Probe probe_;
  std::shared_ptr<LateReloadHandle> handle_;
};

TEST(blocking_calls, wait_ready_reload_and_shutdown_block_a_plain_thread_until_done) {
  auto j = std::make_shared<Journal>();
  auto lazy = std::make_shared<Probe>("lazy", j, Behaviour{.defer_ready = true});
  auto late = std::make_shared<LateReloader>("late", j);
  auto m = ProcessManagerBuilder().name("sync").pre_insert(lazy).pre_insert(late).build();
  Running run(m, 2);
  ASSERT_TRUE(j->wait_for("start lazy"));
  EXPECT_FALSE(m->wait_ready_blocking(1ms)) << "lazy has not said it is ready";
  pm::test::send(lazy, 1);
  EXPECT_TRUE(m->wait_ready_blocking(pm::test::hang_guard));

  m->reload_blocking();
  EXPECT_EQ(late->handle().ended.load(), 1) << "reload_blocking() returned before a child's reload() ended";

  m->shutdown_blocking();
  EXPECT_EQ(j->count("stop lazy"), 1u);
  EXPECT_EQ(j->count("stop late"), 1u);
  EXPECT_EQ(m->status().state, pm::ChildState::stopped) << "shutdown_blocking() returned before the tree stopped";
  EXPECT_EQ(run.finish(), nullptr);
  EXPECT_FALSE(m->wait_ready_blocking(pm::test::hang_guard)) << "a stopped manager answers at once";
}

TEST(blocking_calls, on_a_manager_that_does_not_run_shutdown_and_reload_return_at_once) {
  auto m = ProcessManagerBuilder().name("idle").build();
  m->reload_blocking();
  m->shutdown_blocking();
  SUCCEED();
}

/// Calls `call` and returns what std::logic_error it threw, or "" if none.
template <class F>
std::string logic_error_of(F&& call) {
  try {
    call();
  } catch (const std::logic_error& e) {
    return e.what();
  }
  return "";
}

TEST(blocking_calls, on_a_thread_of_the_managers_io_context_they_throw_logic_error_naming_it) {
  auto j = std::make_shared<Journal>();
  auto a = std::make_shared<Probe>("a", j);
  auto m = ProcessManagerBuilder().name("busy-tree").pre_insert(a).build();
  Running run(m, 2);
  ASSERT_TRUE(run.wait_ready());
  auto answers = asio::co_spawn(
      run.io(),
      [m]() -> asio::awaitable<std::vector<std::string>> {
        std::vector<std::string> out;
        out.push_back(logic_error_of([&] { (void)m->wait_ready_blocking(1h); }));
        out.push_back(logic_error_of([&] { m->reload_blocking(); }));
        out.push_back(logic_error_of([&] { m->shutdown_blocking(); }));
        co_return out;
      },
      asio::use_future);
  ASSERT_EQ(answers.wait_for(pm::test::hang_guard), std::future_status::ready);
  const auto texts = answers.get();
  const char* calls[] = {"wait_ready_blocking()", "reload_blocking()", "shutdown_blocking()"};
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_NE(texts[i].find("'busy-tree'"), std::string::npos) << texts[i];
    EXPECT_NE(texts[i].find(calls[i]), std::string::npos) << texts[i];
  }
  EXPECT_TRUE(m->is_ready()) << "a refused call changes nothing";
  EXPECT_EQ(j->count("stop a"), 0u);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(blocking_calls, a_child_of_the_manager_is_refused_too) {
  auto refused = std::make_shared<std::promise<std::string>>();
  auto m = ProcessManagerBuilder().name("parent").build();
  std::weak_ptr<pm::ProcessManager> weak = m;
  m->insert(pm::make_runnable("impatient", [weak, refused](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    if (auto tree = weak.lock()) refused->set_value(logic_error_of([&] { tree->shutdown_blocking(); }));
    (void)co_await ctx.next_control();
  }));
  Running run(m, 2);
  auto text = refused->get_future();
  ASSERT_EQ(text.wait_for(pm::test::hang_guard), std::future_status::ready);
  EXPECT_NE(text.get().find("'parent'"), std::string::npos);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(blocking_calls, a_thread_of_another_io_context_may_block) {
  auto j = std::make_shared<Journal>();
  auto a = std::make_shared<Probe>("a", j);
  auto m = ProcessManagerBuilder().name("m").pre_insert(a).build();
  Running run(m, 2);
  asio::io_context other;
  auto ready = asio::co_spawn(
      other, [m]() -> asio::awaitable<bool> { co_return m->wait_ready_blocking(pm::test::hang_guard); },
      asio::use_future);
  pm::test::run_io(other);
  EXPECT_TRUE(ready.get());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

}  // namespace
