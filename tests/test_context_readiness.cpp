// A lambda service's readiness: ready once its body first suspends (not
// before its first statement), ctx.defer_readiness() as guard services have
// it, and a ready() call that could have no effect is an error, not silence.
#include <processmanager/context.hpp>

#include <gtest/gtest.h>

#include <future>
#include <string>

#include "lifecycle_support.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;
using pm::ChildState;
using pm::ProcessManagerBuilder;
using pm::RuntimeContext;
using pm::test::Running;

/// Runs `call` and returns what std::logic_error it threw, or "" if none.
template <class F>
std::string logic_error_of(F&& call) {
  try {
    call();
  } catch (const std::logic_error& e) {
    return e.what();
  }
  return "";
}

/// The state of the manager's child `name`, or "absent".
std::string state_of(const pm::ProcessManager& m, const std::string& name) {
  const auto st = m.status();
  const auto* c = st.find(name);
  return c == nullptr ? "absent" : std::string(pm::to_string(c->state));
}

/// Waits for shutdown, then returns: the tail of every body below.
asio::awaitable<void> until_shutdown(RuntimeContext& ctx) {
  for (;;) {
    auto msg = co_await ctx.next_control();
    if (msg.is_shutdown()) co_return;
  }
}

TEST(context_readiness, a_lambda_is_not_ready_before_its_first_statement_but_once_it_suspends) {
  auto m = ProcessManagerBuilder().name("m").build();
  std::weak_ptr<pm::ProcessManager> weak = m;
  auto at_first_statement = std::make_shared<std::promise<std::string>>();
  m->insert(pm::make_runnable("eager", [weak, at_first_statement](RuntimeContext& ctx) -> asio::awaitable<void> {
    if (auto tree = weak.lock()) at_first_statement->set_value(state_of(*tree, "eager"));
    co_await until_shutdown(ctx);
  }));
  Running run(m, 2);
  auto first = at_first_statement->get_future();
  ASSERT_EQ(first.wait_for(pm::test::hang_guard), std::future_status::ready);
  EXPECT_EQ(first.get(), "running") << "counted ready before its body ran";
  EXPECT_TRUE(m->wait_ready_blocking(pm::test::hang_guard)) << "ready once the body suspends, unasked";
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(context_readiness, defer_readiness_holds_a_lambda_back_until_it_says_ready) {
  auto m = ProcessManagerBuilder().name("m").build();
  auto suspended = std::make_shared<std::promise<void>>();
  m->insert(pm::make_runnable("lazy", [suspended](RuntimeContext& ctx) -> asio::awaitable<void> {
    ctx.defer_readiness();
    // A suspension first: the report that a lambda started is queued
    // behind it, so by the time this resumes it has been decided.
    auto ex = co_await asio::this_coro::executor;
    co_await asio::post(ex, asio::use_awaitable);
    suspended->set_value();
    for (;;) {
      auto msg = co_await ctx.next_control();
      if (msg.is_shutdown()) co_return;
      if (msg.is_custom()) ctx.ready();
    }
  }));
  Running run(m, 2);
  ASSERT_EQ(suspended->get_future().wait_for(pm::test::hang_guard), std::future_status::ready);
  EXPECT_FALSE(m->is_ready());
  EXPECT_EQ(state_of(*m, "lazy"), "running");
  m->process_handle()->control(pm::RuntimeControlMessage::custom(1));
  EXPECT_TRUE(m->wait_ready_blocking(pm::test::hang_guard));
  EXPECT_EQ(state_of(*m, "lazy"), "ready");
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(context_readiness, a_ready_call_that_cannot_take_effect_throws_logic_error_naming_the_service) {
  auto m = ProcessManagerBuilder().name("m").build();
  auto refused = std::make_shared<std::promise<std::string>>();
  m->insert(pm::make_runnable("late-ready", [refused](RuntimeContext& ctx) -> asio::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    co_await asio::post(ex, asio::use_awaitable);
    refused->set_value(logic_error_of([&] { ctx.ready(); }));
    co_await until_shutdown(ctx);
  }));
  Running run(m, 2);
  auto text = refused->get_future();
  ASSERT_EQ(text.wait_for(pm::test::hang_guard), std::future_status::ready);
  const std::string what = text.get();
  EXPECT_NE(what.find("'late-ready'"), std::string::npos) << what;
  EXPECT_NE(what.find("defer_readiness()"), std::string::npos) << what;
  EXPECT_NE(what.find("explicit_ready"), std::string::npos) << what;
  EXPECT_TRUE(run.wait_ready());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(context_readiness, ready_before_the_first_suspension_or_under_explicit_ready_takes_effect) {
  auto m = ProcessManagerBuilder().name("m").build();
  auto answers = std::make_shared<std::promise<std::string>>();
  // Said at once, then again later: the first call made it ready, the
  // second changes nothing, as a deferred service's second ready() does.
  m->insert(pm::make_runnable("prompt", [answers](RuntimeContext& ctx) -> asio::awaitable<void> {
    std::string out = logic_error_of([&] { ctx.ready(); });
    auto ex = co_await asio::this_coro::executor;
    co_await asio::post(ex, asio::use_awaitable);
    out += logic_error_of([&] { ctx.ready(); });
    answers->set_value(out);
    co_await until_shutdown(ctx);
  }));
  auto declared = std::make_shared<std::promise<std::string>>();
  m->insert(pm::make_runnable("declared",
                              [declared](RuntimeContext& ctx) -> asio::awaitable<void> {
                                auto ex = co_await asio::this_coro::executor;
                                co_await asio::post(ex, asio::use_awaitable);
                                declared->set_value(logic_error_of([&] { ctx.ready(); }));
                                co_await until_shutdown(ctx);
                              }),
            pm::ChildOptions{.explicit_ready = true});
  Running run(m, 2);
  auto a = answers->get_future();
  auto d = declared->get_future();
  ASSERT_EQ(a.wait_for(pm::test::hang_guard), std::future_status::ready);
  ASSERT_EQ(d.wait_for(pm::test::hang_guard), std::future_status::ready);
  EXPECT_EQ(a.get(), "");
  EXPECT_EQ(d.get(), "");
  EXPECT_TRUE(run.wait_ready());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

TEST(context_readiness, defer_readiness_after_the_first_suspension_or_outside_a_run_throws) {
  auto m = ProcessManagerBuilder().name("m").build();
  auto refused = std::make_shared<std::promise<std::string>>();
  m->insert(pm::make_runnable("too-late", [refused](RuntimeContext& ctx) -> asio::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    co_await asio::post(ex, asio::use_awaitable);
    refused->set_value(logic_error_of([&] { ctx.defer_readiness(); }));
    co_await until_shutdown(ctx);
  }));
  Running run(m, 2);
  auto text = refused->get_future();
  ASSERT_EQ(text.wait_for(pm::test::hang_guard), std::future_status::ready);
  EXPECT_NE(text.get().find("'too-late'"), std::string::npos);
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);

  RuntimeContext idle("idle", [](RuntimeContext&) -> asio::awaitable<void> { co_return; });
  EXPECT_NE(logic_error_of([&] { idle.ready(); }).find("'idle'"), std::string::npos);
  EXPECT_NE(logic_error_of([&] { idle.defer_readiness(); }).find("'idle'"), std::string::npos);
}

// A guard service keeps the same promise: its ready() counts, or throws.
class GuardService final : public pm::Runnable {
 public:
  enum class Mode { plain, deferred, before_ticker };
  GuardService(std::string name, Mode mode) : name_(std::move(name)), mode_(mode), guard_(name_) {}
  asio::awaitable<void> process_start() override {
    if (mode_ == Mode::deferred) guard_.defer_readiness();
    std::string out;
    if (mode_ == Mode::before_ticker) out += logic_error_of([&] { guard_.ready(); });
    auto ticker = co_await guard_.runtime_ticker();
    out += logic_error_of([&] { guard_.ready(); });
    answer.set_value(out);
    for (;;) {
      if ((co_await ticker.next_control()).is_shutdown()) co_return;
    }
  }
  std::string process_name() const override { return name_; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard_.handle(); }
  std::promise<std::string> answer;

 private:
  std::string name_;
  Mode mode_;
  pm::RuntimeGuard guard_;
};

TEST(context_readiness, a_guards_ready_counts_when_readiness_is_held_back_and_throws_when_it_changes_nothing) {
  using Mode = GuardService::Mode;
  auto plain = std::make_shared<GuardService>("plain", Mode::plain);
  auto deferred = std::make_shared<GuardService>("deferred", Mode::deferred);
  auto early = std::make_shared<GuardService>("early", Mode::before_ticker);
  auto declared = std::make_shared<GuardService>("declared", Mode::plain);
  auto m = ProcessManagerBuilder()
               .name("m")
               .pre_insert(plain)
               .pre_insert(deferred)
               .pre_insert(early)
               .pre_insert(declared, {.explicit_ready = true})
               .build();
  Running run(m, 2);
  auto said = [](GuardService& g) {
    auto f = g.answer.get_future();
    EXPECT_EQ(f.wait_for(pm::test::hang_guard), std::future_status::ready);
    return f.get();
  };
  // Ready since its ticker: the call is a mistake about when it is ready.
  const std::string refused = said(*plain);
  EXPECT_NE(refused.find("'plain'"), std::string::npos) << refused;
  EXPECT_NE(refused.find("defer_readiness()"), std::string::npos) << refused;
  EXPECT_NE(refused.find("explicit_ready"), std::string::npos) << refused;
  EXPECT_EQ(said(*deferred), "");
  EXPECT_EQ(said(*declared), "");
  // Before its ticker it counts; after it, the service was ready already.
  EXPECT_NE(said(*early).find("'early'"), std::string::npos);
  EXPECT_TRUE(run.wait_ready());
  run.stop();
  EXPECT_EQ(run.finish(), nullptr);
}

}  // namespace
