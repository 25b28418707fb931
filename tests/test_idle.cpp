#include <processmanager/builtin/idle.hpp>

#include <gtest/gtest.h>

#include "support.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;

TEST(idle, keeps_a_manager_without_other_children_running_until_shutdown) {
  asio::io_context io;
  auto m = pm::ProcessManagerBuilder().pre_insert(std::make_shared<pm::IdleProcess>()).build();
  std::atomic<bool> job_done{false};
  bool still_running_after_job = false;
  bool done = false;
  asio::co_spawn(asio::make_strand(io), m->process_start(), [&](std::exception_ptr e) {
    EXPECT_EQ(e, nullptr);
    done = true;
  });
  asio::post(io, [&] {
    m->add(pm::make_runnable("job", [&job_done](pm::RuntimeContext&) -> asio::awaitable<void> {
      job_done = true;
      co_return;
    }));
  });
  // Once the job has gone from the books, only the idle child is left.
  std::function<void()> check = [&] {
    if (!job_done || m->running_count() != 1) {
      asio::post(io, check);
      return;
    }
    still_running_after_job = m->is_running();
    m->process_handle()->request_shutdown();
  };
  asio::post(io, check);
  pm::test::run_io(io);
  EXPECT_TRUE(done);
  EXPECT_TRUE(still_running_after_job);
}

TEST(idle, ignores_reload_and_custom_messages) {
  auto idle = std::make_shared<pm::IdleProcess>("keeper");
  EXPECT_EQ(idle->process_name(), "keeper");
  auto h = idle->process_handle();
  h->request_reload();
  h->control(pm::RuntimeControlMessage::custom(1));
  h->request_shutdown();
  EXPECT_NO_THROW(pm::test::run_coro(idle->process_start()));
}

}  // namespace
