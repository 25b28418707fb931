#include <processmanager/runnable.hpp>

#include <gtest/gtest.h>

#include <vector>

#include "support.hpp"

namespace demo_ns {
struct NamedByType : pm::Runnable {
  pm::asio::awaitable<void> process_start() override { co_return; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return nullptr; }
};
}  // namespace demo_ns

namespace {

struct Recorder : pm::ProcessControlHandler {
  std::vector<pm::ControlKind> seen;
  void control(pm::RuntimeControlMessage msg) override { seen.push_back(msg.kind()); }
};

TEST(runnable, default_name_is_the_readable_dynamic_type) {
  demo_ns::NamedByType r;
  const pm::Runnable& base = r;
  EXPECT_EQ(base.process_name(), "demo_ns::NamedByType");
}

TEST(runnable, handle_helpers_send_the_right_messages) {
  auto h = std::make_shared<Recorder>();
  h->request_shutdown();
  h->request_reload();
  pm::test::run_coro([](std::shared_ptr<Recorder> rec) -> pm::asio::awaitable<void> {
    co_await rec->reload();
    co_await rec->shutdown();
  }(h));
  ASSERT_EQ(h->seen.size(), 4u);
  EXPECT_EQ(h->seen[0], pm::ControlKind::shutdown);
  EXPECT_EQ(h->seen[1], pm::ControlKind::reload);
  EXPECT_EQ(h->seen[2], pm::ControlKind::reload);
  EXPECT_EQ(h->seen[3], pm::ControlKind::shutdown);
}

}  // namespace
