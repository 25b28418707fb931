// The demo: a small but realistic service tree, as `make demo` runs it.
//
//   demo                  health endpoints (HTTP), a heartbeat worker, a
//   ├── health            flaky worker restarted with backoff, a blocking
//   ├── heartbeat         thread worker, a signal receiver (SIGUSR1 reloads
//   ├── flaky             too), and the run's deadline when --for is given.
//   ├── disk-poller
//   ├── signals
//   └── deadline
//
// Every event is logged (PM_LOG=info quietens it). SIGHUP reloads the tree,
// Ctrl-C or SIGTERM stop it gracefully with exit code 0; under systemd
// (Type=notify-reload) pm::run also speaks the notify protocol.
//
//   demo [--for 5s|500ms|2m] [--port N] [--address A]
//        port 0, the default, picks one; the address defaults to 127.0.0.1
//        (0.0.0.0 in a container, so that the kubelet can probe it)
#include <processmanager/processmanager.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>

#include <sys/statvfs.h>
#include <unistd.h>

namespace asio = pm::asio;
using namespace std::chrono_literals;

namespace {

std::optional<std::chrono::milliseconds> parse_duration(const std::string& s) {
  std::size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  const std::string unit = s.substr(used);
  if (v < 0) return std::nullopt;
  if (unit == "ms") return std::chrono::milliseconds(v);
  if (unit == "s" || unit.empty()) return std::chrono::seconds(v);
  if (unit == "m") return std::chrono::minutes(v);
  return std::nullopt;
}

void say(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

/// Beats every 500 ms; says so on reload.
class Heartbeat : public pm::Runnable {
 public:
  asio::awaitable<void> process_start() override {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    auto ticker = co_await guard_.runtime_ticker();
    std::uint64_t beats = 0;
    for (;;) {
      guard_.heartbeat();
      timer.expires_after(500ms);
      auto wait = timer.async_wait(asio::deferred);
      auto op = co_await ticker.tick(std::move(wait));
      if (op.is_next()) {
        ++beats;
        continue;
      }
      if (op.control().is_shutdown()) {
        say("heartbeat: stopping after " + std::to_string(beats) + " beats");
        co_return;
      }
      if (op.control().is_reload()) say("heartbeat: reload received");
    }
  }
  std::string process_name() const override { return "heartbeat"; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard_.handle(); }

 private:
  pm::RuntimeGuard guard_{"heartbeat"};
};

/// Works for a while, then fails: the manager restarts it with backoff.
class Flaky : public pm::Runnable {
 public:
  asio::awaitable<void> process_start() override {
    const int run = ++runs_;
    asio::steady_timer timer(co_await asio::this_coro::executor);
    auto ticker = co_await guard_.runtime_ticker();
    timer.expires_after(1500ms);
    for (;;) {
      auto op = co_await ticker.tick(timer.async_wait(asio::deferred));
      if (op.is_next()) break;
      if (op.control().is_shutdown()) co_return;
      // A reload has nothing to reload here: wait on for the same deadline.
      // (Failing on it would make every SIGHUP a failure, and a SIGTERM
      // just after one exit 1.)
    }
    throw std::runtime_error("lost its upstream connection (run " + std::to_string(run) + ")");
  }
  std::string process_name() const override { return "flaky"; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard_.handle(); }

 private:
  pm::RuntimeGuard guard_{"flaky"};
  int runs_ = 0;
};

/// Ends the run after `duration`: --for.
std::shared_ptr<pm::Runnable> deadline(std::chrono::milliseconds duration,
                                       std::shared_ptr<pm::ProcessControlHandler> tree) {
  return pm::make_runnable("deadline", [duration, tree](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    asio::steady_timer timer(co_await asio::this_coro::executor, duration);
    for (;;) {
      auto wait = timer.async_wait(asio::deferred);
      auto op = co_await ctx.tick(std::move(wait));
      if (op.is_next()) {
        say("demo: time is up, stopping");
        tree->request_shutdown();
        co_return;
      }
      if (op.control().is_shutdown()) co_return;
    }
  });
}

/// Prints once when the whole tree is ready.
std::shared_ptr<pm::Runnable> announcer(const std::shared_ptr<pm::ProcessManager>& tree) {
  std::weak_ptr<pm::ProcessManager> weak = tree;
  return pm::make_runnable("announcer", [weak](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
    if (auto t = weak.lock()) {
      auto ready = t->wait_ready(std::chrono::hours(24));
      auto op = co_await ctx.tick(std::move(ready));
      if (op.is_next() && op.next()) say("demo: every service is ready");
      if (op.is_control() && op.control().is_shutdown()) co_return;
    }
    for (;;) {
      auto msg = co_await ctx.next_control();
      if (msg.is_shutdown()) co_return;
    }
  });
}

/// The demo's tree; throws std::invalid_argument for a bad address.
std::shared_ptr<pm::ProcessManager> build_tree(std::uint16_t port, const std::string& address,
                                               std::optional<std::chrono::milliseconds> run_for) {
  auto root = pm::ProcessManagerBuilder()
                  .name("demo")
                  .strategy(pm::Strategy::one_for_one)
                  // The health server starts first and stops last: /readyz
                  // answers 503 throughout the stop.
                  .start_order(pm::StartOrder::sequential)
                  .intensity(10, 30s)
                  .shutdown_grace_period(5s)
                  .build();
  const pm::RestartOptions backoff{.policy = pm::RestartPolicy::permanent,
                                   .backoff = {.initial = 200ms, .factor = 2.0, .max = 5s, .jitter = true},
                                   .reset_after = 10s};

  pm::HealthOptions health{.address = address, .port = port, .on_listening = [address](std::uint16_t p) {
                             const std::string base = "http://" + address + ":" + std::to_string(p);
                             say("demo: health endpoints on " + base + "/livez /readyz /status /metrics");
                             say("demo: try  curl " + base + "/readyz?verbose   |   kill -HUP " +
                                 std::to_string(::getpid()) + " reloads, Ctrl-C stops");
                           }};
  // A readiness check of the program's own: /readyz fails while the disk
  // is (nearly) full. statvfs() does not block for long: a plain function.
  health.checks.push_back(pm::make_check("disk", pm::CheckKind::readiness, [] {
    struct statvfs fs {};
    if (::statvfs("/", &fs) != 0) return pm::HealthCheckResult::unhealthy("statvfs failed");
    const double free = static_cast<double>(fs.f_bavail) / static_cast<double>(fs.f_blocks);
    return free > 0.01 ? pm::HealthCheckResult::healthy()
                       : pm::HealthCheckResult::unhealthy(std::to_string(free * 100) + "% free");
  }));
  // Metrics of the program's own, in the same /metrics document.
  health.metrics = [](pm::MetricsWriter& w) {
    struct statvfs fs {};
    if (::statvfs("/", &fs) != 0) return;
    w.family("demo_disk_free_bytes", "gauge", "Bytes free on / for unprivileged users.");
    w.sample("demo_disk_free_bytes", {{"mount", "/"}},
             static_cast<double>(fs.f_bavail) * static_cast<double>(fs.f_frsize));
  };
  root->insert(std::make_shared<pm::HealthServer>(root, std::move(health)));
  root->insert(std::make_shared<Heartbeat>(), pm::ChildOptions{.heartbeat_timeout = 3s});
  root->insert(std::make_shared<Flaky>(), pm::ChildOptions{.restart = backoff});
  root->insert(pm::make_blocking_runnable("disk-poller",
                                          [](pm::BlockingContext& ctx) {
                                            // A plain thread: polls, beats, and hears reloads too.
                                            while (!ctx.stop_requested()) {
                                              ctx.heartbeat();
                                              if (auto msg = ctx.next_control(1s); msg && msg->is_reload()) {
                                                say("disk-poller: reload received");
                                              }
                                            }
                                            say("disk-poller: stopped");
                                          }),
               pm::ChildOptions{.heartbeat_timeout = 5s});
  // pm::run handles SIGINT, SIGTERM and SIGHUP; this one makes SIGUSR1 a
  // reload as well, from inside the tree.
  root->insert(std::make_shared<pm::SignalReceiver>(
      root->process_handle(),
      pm::SignalReceiverOptions{.stop_signals = {}, .reload_signals = {SIGUSR1}, .escalate = {}}));
  root->insert(announcer(root));
  if (run_for) root->insert(deadline(*run_for, root->process_handle()));

  return root;
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<std::chrono::milliseconds> run_for;
  std::uint16_t port = 0;
  std::string address = "127.0.0.1";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--for" && has_value) {
      run_for = parse_duration(argv[++i]);
      if (!run_for) {
        std::fprintf(stderr, "demo: --for wants a duration like 5s, 500ms or 2m\n");
        return 2;
      }
    } else if (arg == "--port" && has_value) {
      const long p = std::strtol(argv[++i], nullptr, 10);
      if (p < 0 || p > 65535) {
        std::fprintf(stderr, "demo: --port wants 0..65535\n");
        return 2;
      }
      port = static_cast<std::uint16_t>(p);
    } else if (arg == "--address" && has_value) {
      address = argv[++i];
    } else {
      std::fprintf(stderr, "usage: demo [--for 5s] [--port N] [--address A]\n");
      return 2;
    }
  }
  if (std::getenv("PM_LOG") == nullptr) pm::set_log_level(pm::LogLevel::debug);  // every event

  std::shared_ptr<pm::ProcessManager> root;
  try {
    root = build_tree(port, address, run_for);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "demo: %s\n", e.what());  // a bad --address, say
    return 2;
  }
  say("demo: pid " + std::to_string(::getpid()) +
      (run_for ? ", running for " + std::to_string(run_for->count()) + " ms" : ""));
  const int code = pm::run(root, {.threads = 2});
  say("demo: exit code " + std::to_string(code));
  return code;
}
