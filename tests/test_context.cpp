#include <processmanager/context.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <string>

#include "support.hpp"

namespace {

namespace asio = pm::asio;
using pm::RuntimeContext;
using pm::test::run_coro;

TEST(context, a_lambda_service_ticks_and_its_captures_outlive_every_run) {
  auto seen = std::make_shared<std::vector<std::string>>();
  std::string prefix = "got:";
  auto svc = pm::make_runnable("lambda", [seen, prefix](RuntimeContext& ctx) -> asio::awaitable<void> {
    for (;;) {
      asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::hours(1));
      auto op = co_await ctx.tick(t.async_wait(asio::deferred));
      if (op.is_next()) continue;
      // The captures are read after suspensions: they live in the runnable.
      seen->push_back(prefix + std::string(pm::to_string(op.control().kind())));
      if (op.control().is_shutdown()) co_return;
    }
  });
  EXPECT_EQ(svc->process_name(), "lambda");
  auto h = svc->process_handle();
  h->request_reload();
  h->request_shutdown();
  run_coro(svc->process_start());
  // A second run of the same runnable works too.
  h->request_shutdown();
  run_coro(svc->process_start());
  ASSERT_EQ(seen->size(), 3u);
  EXPECT_EQ((*seen)[0], "got:reload");
  EXPECT_EQ((*seen)[1], "got:shutdown");
  EXPECT_EQ((*seen)[2], "got:shutdown");
}

TEST(context, a_runnable_dropped_right_after_process_start_keeps_its_captures_for_the_whole_run) {
  // The classic crash: the runnable (and so the callable) is a temporary,
  // gone before the run starts. Its captures must live until the run ends.
  auto released = std::make_shared<std::atomic<bool>>(false);
  struct Seen {
    bool released_during_run = true;
    std::string words;
    int value = 0;
  } seen;
  std::exception_ptr error;
  bool finished = false;
  asio::io_context io;
  {
    auto payload = std::shared_ptr<int>(new int(42), [released](int* p) {
      released->store(true);
      delete p;
    });
    // Longer than any small-string buffer: the text lives on the heap,
    // where ASan sees a read after it is freed.
    std::string words = std::string("captured by value ").append(64, 'x');
    auto body = [payload, words, released, &seen](RuntimeContext& ctx) -> asio::awaitable<void> {
      auto ex = co_await asio::this_coro::executor;
      for (int i = 0; i < 5; ++i) co_await asio::post(ex, asio::use_awaitable);
      seen.released_during_run = released->load();
      seen.words = words;
      seen.value = *payload;
      (void)ctx.name();
    };
    asio::co_spawn(io, pm::make_runnable("temporary", std::move(body))->process_start(), [&](std::exception_ptr e) {
      error = e;
      finished = true;
    });
  }  // the runnable, and the test's own copies of the captures, are gone
  EXPECT_FALSE(released->load()) << "the callable died with the temporary runnable";
  pm::test::run_io(io);
  ASSERT_TRUE(finished);
  EXPECT_EQ(error, nullptr);
  EXPECT_FALSE(seen.released_during_run);
  EXPECT_EQ(seen.words, std::string("captured by value ").append(64, 'x'));
  EXPECT_EQ(seen.value, 42);
  EXPECT_TRUE(released->load()) << "the run let the runnable go when it ended";
}

TEST(context, next_control_waits_for_control_only) {
  auto svc = pm::make_runnable("waiter", [](RuntimeContext& ctx) -> asio::awaitable<void> {
    auto h = ctx.handle();
    auto ex = co_await asio::this_coro::executor;
    asio::post(ex, [h] { h->control(pm::RuntimeControlMessage::custom(5)); });
    auto msg = co_await ctx.next_control();
    if (msg.custom_if<int>() == nullptr || *msg.custom_if<int>() != 5) throw std::runtime_error("wrong message");
  });
  EXPECT_NO_THROW(run_coro(svc->process_start()));
}

TEST(context, an_empty_body_is_rejected_with_invalid_argument) {
  EXPECT_THROW(pm::make_runnable("empty", nullptr), std::invalid_argument);
}

TEST(context, tick_outside_a_run_throws_logic_error_naming_the_service) {
  RuntimeContext ctx("orphan", [](RuntimeContext&) -> asio::awaitable<void> { co_return; });
  try {
    (void)ctx.next_control();
    FAIL() << "no throw";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find("orphan"), std::string::npos);
  }
}

TEST(context, an_exception_in_the_body_propagates) {
  auto svc = pm::make_runnable("thrower", [](RuntimeContext&) -> asio::awaitable<void> {
    throw std::runtime_error("bad config");
    co_return;
  });
  EXPECT_THROW(run_coro(svc->process_start()), std::runtime_error);
}

}  // namespace
