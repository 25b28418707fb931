// A supervision tree with all three restarting strategies:
//
//   app            one_for_one, sequential start (config first, then the rest)
//   ├── config     says it is ready only once it has "loaded"
//   ├── db         rest_for_one: pool -> writer -> reader (a writer failure
//   │              restarts writer and reader, never the pool)
//   ├── workers    one_for_all: w1, w2 (a worker failure restarts both)
//   └── chaos      breaks db/writer, then workers/w1, waits for each restart
//                  (the event hook tells it), prints the tree's status as
//                  JSON and stops the tree.
//
// Every event is printed as it happens. Exit code 0 when the story went as
// designed.
#include <processmanager/processmanager.hpp>

#include <boost/json.hpp>

#include <chrono>
#include <cstdio>
#include <string>

namespace asio = pm::asio;
using namespace std::chrono_literals;

namespace {

/// A service that runs until told to stop and fails when sent custom(2).
std::shared_ptr<pm::Runnable> service(const std::string& name) {
  return pm::make_runnable(name, [name](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    for (;;) {
      auto msg = co_await ctx.next_control();
      if (msg.is_shutdown()) co_return;
      if (const int* code = msg.custom_if<int>(); code != nullptr && *code == 2) {
        throw std::runtime_error(name + ": injected failure");
      }
    }
  });
}

pm::ChildOptions quick_restarts() {
  pm::ChildOptions o;
  o.restart = pm::RestartOptions{};
  o.restart->policy = pm::RestartPolicy::permanent;
  o.restart->backoff = {.initial = 5ms, .factor = 2.0, .max = 100ms, .jitter = true};
  return o;
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  auto config = pm::make_runnable("config", [](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    asio::steady_timer load(co_await asio::this_coro::executor, 30ms);  // "loading the configuration"
    auto wait = load.async_wait(asio::deferred);
    auto op = co_await ctx.tick(wait);
    if (op.is_control() && op.control().is_shutdown()) co_return;
    ctx.ready();
    while (!(co_await ctx.next_control()).is_shutdown()) {
    }
  });
  pm::ChildOptions explicit_ready;
  explicit_ready.explicit_ready = true;
  explicit_ready.start_timeout = 10s;

  auto writer = service("writer");
  auto db = pm::ProcessManagerBuilder()
                .name("db")
                .strategy(pm::Strategy::rest_for_one)
                .pre_insert(service("pool"), quick_restarts())
                .pre_insert(writer, quick_restarts())
                .pre_insert(service("reader"), quick_restarts())
                .build();

  auto w1 = service("w1");
  auto workers = pm::ProcessManagerBuilder()
                     .name("workers")
                     .strategy(pm::Strategy::one_for_all)
                     .pre_insert(w1, quick_restarts())
                     .pre_insert(service("w2"), quick_restarts())
                     .build();

  std::shared_ptr<pm::ProcessManager> app;
  bool story_ok = false;
  auto chaos = pm::make_runnable("chaos", [&](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    // Waits for the restart the hook reports for `path`.
    auto restarted = [&ctx](std::string path) -> asio::awaitable<bool> {
      for (;;) {
        auto msg = co_await ctx.next_control();
        if (msg.is_shutdown()) co_return false;
        if (const auto* p = msg.custom_if<std::string>(); p != nullptr && *p == path) co_return true;
      }
    };
    if (!co_await app->wait_ready(10s)) co_return;
    std::printf("chaos: the tree is ready; breaking db/writer\n");
    auto writer_handle = writer->process_handle();
    writer_handle->control(pm::RuntimeControlMessage::custom(2));
    if (!co_await restarted("app/db/writer")) co_return;
    std::printf("chaos: breaking workers/w1\n");
    auto w1_handle = w1->process_handle();
    w1_handle->control(pm::RuntimeControlMessage::custom(2));
    if (!co_await restarted("app/workers/w1")) co_return;
    if (!co_await app->wait_ready(10s)) co_return;
    const auto status = app->status();
    std::printf("chaos: status %s\n", boost::json::serialize(pm::to_json(status)).c_str());
    // db: writer and reader restarted once, the pool never; workers: both once.
    const auto& dbs = status.children.at(1).children;
    const auto& ws = status.children.at(2).children;
    story_ok = dbs.at(0).restarts == 0 && dbs.at(1).restarts == 1 && dbs.at(2).restarts == 1 &&
               ws.at(0).restarts == 1 && ws.at(1).restarts == 1;
    std::printf("chaos: done; stopping the tree\n");
    auto h = app->process_handle();
    h->request_shutdown();
  });

  auto hook = [chaos](const pm::Event& e) {
    std::printf("event  %-22s %s\n", e.path.c_str(), pm::describe(e).c_str());
    if (e.kind == pm::EventKind::restart) {
      auto h = chaos->process_handle();
      h->control(pm::RuntimeControlMessage::custom(e.path));
    }
  };
  app = pm::ProcessManagerBuilder()
            .name("app")
            .strategy(pm::Strategy::one_for_one)
            .start_order(pm::StartOrder::sequential)
            .on_event(hook)
            .pre_insert(config, explicit_ready)
            .pre_insert(db)
            .pre_insert(workers)
            .pre_insert(chaos)
            .build();
  const int code = pm::run(app, {.threads = 2, .handle_signals = true});
  std::printf("exit code %d; story %s\n", code, story_ok ? "as designed" : "NOT as designed");
  return code == 0 && story_ok ? 0 : 1;
}
