// Load scenarios: the library beside bare Asio doing the same work, in the
// same run. Prints one JSON object per line on stdout and nothing else;
// progress goes to stderr.
//
//   pm_load [--n 1000,10000,100000] [--threads 1,2] [--scenario NAME|all] [--repeat R]
//
// With --repeat R each figure is the median of R runs, pm and baseline
// taking turns.
//
// Each (scenario, impl, n, threads) runs in a forked child process, so that
// one measurement's heap and RSS never colour the next.
#include <processmanager/processmanager.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace asio = pm::asio;
using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

long rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10) * 1024;
  }
  return -1;
}

double ms_between(clock_type::time_point a, clock_type::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

/// The JSON field of one result: bytes per service for memory, else ms.
std::string result_field(const std::string& scenario, double result) {
  std::ostringstream out;
  if (scenario == "memory") {
    out << "\"bytes_per_service\":" << static_cast<long>(result);
  } else {
    out << "\"ms\":" << result;
  }
  return out.str();
}

/// Marks the moment the n-th of n events happened.
struct Countdown {
  explicit Countdown(std::size_t n_) : n(n_) {}
  void hit() {
    if (count.fetch_add(1) + 1 == n) at.store(clock_type::now().time_since_epoch().count());
  }
  // Done once the time is recorded, not merely counted: with several
  // threads the last hit's store may still be on its way.
  bool done() const { return at.load() != 0; }
  clock_type::time_point when() const { return clock_type::time_point(clock_type::duration(at.load())); }
  std::size_t n;
  std::atomic<std::size_t> count{0};
  std::atomic<clock_type::rep> at{0};
};

void run_io(asio::io_context& io, std::size_t threads) {
  std::vector<std::thread> pool;
  for (std::size_t i = 1; i < threads; ++i) pool.emplace_back([&io] { io.run(); });
  io.run();
  for (auto& t : pool) t.join();
}

/// Runs `step` on the io_context repeatedly (re-posting itself) until it
/// returns true: how the scenarios move from one phase to the next without
/// blocking an io thread.
void poll_until(asio::io_context& io, std::function<bool()> step) {
  auto shared = std::make_shared<std::function<void()>>();
  *shared = [&io, step, shared] {
    if (!step()) asio::post(io, *shared);
  };
  asio::post(io, *shared);
}

// ------------------------------------------------------------------ the pm side

/// The service of the scenarios: a ticker, then tick on a one-hour timer.
class IdleService final : public pm::Runnable {
 public:
  IdleService(Countdown* in_loop, Countdown* reloaded) : in_loop_(in_loop), reloaded_(reloaded) {}
  asio::awaitable<void> process_start() override {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    auto ticker = co_await guard_.runtime_ticker();
    in_loop_->hit();
    for (;;) {
      timer.expires_after(1h);
      auto wait = timer.async_wait(asio::deferred);
      auto op = co_await ticker.tick(wait);
      if (op.is_next()) continue;
      if (op.control().is_shutdown()) co_return;
      if (op.control().is_reload() && reloaded_ != nullptr) reloaded_->hit();
    }
  }
  std::string process_name() const override { return "idle"; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard_.handle(); }

 private:
  Countdown* in_loop_;
  Countdown* reloaded_;
  pm::RuntimeGuard guard_;
};

struct PmTree {
  PmTree(std::size_t n, Countdown* in_loop, Countdown* reloaded) {
    pm::ProcessManagerBuilder b;
    b.name("load");
    for (std::size_t i = 0; i < n; ++i) b.pre_insert(std::make_shared<IdleService>(in_loop, reloaded));
    manager = b.build();
  }
  std::shared_ptr<pm::ProcessManager> manager;
};

std::string pm_scenario(const std::string& scenario, std::size_t n, std::size_t threads) {
  asio::io_context io(static_cast<int>(threads));
  Countdown in_loop(n);
  Countdown reloaded(n);
  const long rss0 = rss_bytes();
  PmTree tree(n, &in_loop, &reloaded);
  std::shared_ptr<pm::Runnable> failing;
  auto fail_handle = std::shared_ptr<pm::ProcessControlHandler>();
  if (scenario == "failure") {
    failing = pm::make_runnable("failing", [](pm::RuntimeContext& ctx) -> asio::awaitable<void> {
      for (;;) {
        auto msg = co_await ctx.next_control();
        if (msg.is_custom()) throw std::runtime_error("injected");
        if (msg.is_shutdown()) co_return;
      }
    });
    fail_handle = failing->process_handle();
    tree.manager->insert(failing);
  }
  clock_type::time_point t0{};
  clock_type::time_point t1{};
  double result = 0;
  auto handle = tree.manager->process_handle();
  t0 = clock_type::now();
  asio::co_spawn(asio::make_strand(io), tree.manager->process_start(),
                 [&](const std::exception_ptr&) { t1 = clock_type::now(); });
  poll_until(io, [&] {
    if (!in_loop.done()) return false;
    if (scenario == "startup") {
      result = ms_between(t0, in_loop.when());
      handle->request_shutdown();
    } else if (scenario == "memory") {
      result = static_cast<double>(rss_bytes() - rss0) / static_cast<double>(n);
      handle->request_shutdown();
    } else if (scenario == "shutdown") {
      t0 = clock_type::now();
      asio::co_spawn(io, handle->shutdown(), asio::detached);
    } else if (scenario == "failure") {
      t0 = clock_type::now();
      fail_handle->control(pm::RuntimeControlMessage::custom(1));
    } else if (scenario == "reload") {
      t0 = clock_type::now();
      asio::co_spawn(io, handle->reload(), asio::detached);
      poll_until(io, [&] {
        if (!reloaded.done()) return false;
        result = ms_between(t0, reloaded.when());
        handle->request_shutdown();
        return true;
      });
    }
    return true;
  });
  run_io(io, threads);
  if (scenario == "shutdown" || scenario == "failure") result = ms_between(t0, t1);
  return result_field(scenario, result);
}

std::string pm_churn(std::size_t n, std::size_t threads) {
  asio::io_context io(static_cast<int>(threads));
  auto manager = pm::ProcessManagerBuilder().name("churn").pre_insert(std::make_shared<pm::IdleProcess>()).build();
  std::vector<std::shared_ptr<pm::Runnable>> children;
  children.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    children.push_back(pm::make_runnable("quick", [](pm::RuntimeContext&) -> asio::awaitable<void> { co_return; }));
  }
  clock_type::time_point t0{};
  double result = 0;
  asio::co_spawn(asio::make_strand(io), manager->process_start(), asio::detached);
  poll_until(io, [&] {
    if (!manager->is_running()) return false;
    t0 = clock_type::now();
    for (auto& c : children) manager->add(c);
    poll_until(io, [&] {
      if (manager->child_count() > 1) return false;  // only the idle keeper left
      result = ms_between(t0, clock_type::now());
      manager->process_handle()->request_shutdown();
      return true;
    });
    return true;
  });
  run_io(io, threads);
  return "\"ms\":" + std::to_string(result);
}

std::string pm_restart(std::size_t threads) {
  asio::io_context io(static_cast<int>(threads));
  auto runs = std::make_shared<std::atomic<std::size_t>>(0);
  auto flaky = pm::make_runnable("flaky", [runs](pm::RuntimeContext&) -> asio::awaitable<void> {
    runs->fetch_add(1);
    throw std::runtime_error("again");
    co_return;
  });
  pm::RestartOptions options;
  options.backoff = {.initial = 0ns, .factor = 1.0, .max = 0ns, .jitter = false};
  options.max_restarts = 1u << 30;
  options.window = 1s;
  auto sup = std::make_shared<pm::RestartSupervisor>(flaky, options);
  auto manager = pm::ProcessManagerBuilder().name("restart").pre_insert(sup).build();
  const auto t0 = clock_type::now();
  asio::co_spawn(asio::make_strand(io), manager->process_start(), asio::detached);
  double per_s = 0;
  poll_until(io, [&] {
    const auto elapsed = clock_type::now() - t0;
    if (elapsed < 500ms) return false;
    per_s = static_cast<double>(sup->restarts()) / std::chrono::duration<double>(elapsed).count();
    manager->process_handle()->request_shutdown();
    return true;
  });
  run_io(io, threads);
  return "\"per_s\":" + std::to_string(static_cast<long>(per_s));
}

// ------------------------------------------------------------- the bare Asio side

struct BareWaiter {
  asio::steady_timer* timer = nullptr;
  asio::any_io_executor ex;
};

asio::awaitable<void> bare_idle(Countdown* in_loop, Countdown* ended, BareWaiter* slot) {
  asio::steady_timer timer(co_await asio::this_coro::executor, 1h);
  slot->timer = &timer;
  in_loop->hit();
  boost::system::error_code ec;
  co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  ended->hit();
}

std::string bare_scenario(const std::string& scenario, std::size_t n, std::size_t threads) {
  asio::io_context io(static_cast<int>(threads));
  Countdown in_loop(n);
  Countdown ended(n);
  std::vector<BareWaiter> waiters(n);
  const long rss0 = rss_bytes();
  double result = 0;
  auto t0 = clock_type::now();
  for (std::size_t i = 0; i < n; ++i) {
    // One strand each when several threads run them, as the library does.
    waiters[i].ex =
        threads > 1 ? asio::any_io_executor(asio::make_strand(io)) : asio::any_io_executor(io.get_executor());
    asio::co_spawn(waiters[i].ex, bare_idle(&in_loop, &ended, &waiters[i]), asio::detached);
  }
  auto cancel_all = [&] {
    for (auto& w : waiters) asio::post(w.ex, [t = w.timer] { t->cancel(); });
  };
  poll_until(io, [&] {
    if (!in_loop.done()) return false;
    if (scenario == "startup") {
      result = ms_between(t0, in_loop.when());
      cancel_all();
    } else if (scenario == "memory") {
      result = static_cast<double>(rss_bytes() - rss0) / static_cast<double>(n);
      cancel_all();
    } else {  // shutdown, failure and reload all compare with cancelling everything
      t0 = clock_type::now();
      cancel_all();
      poll_until(io, [&] {
        if (!ended.done()) return false;
        result = ms_between(t0, ended.when());
        return true;
      });
    }
    return true;
  });
  run_io(io, threads);
  return result_field(scenario, result);
}

std::string bare_churn(std::size_t n, std::size_t threads) {
  asio::io_context io(static_cast<int>(threads));
  Countdown ended(n);
  const auto t0 = clock_type::now();
  for (std::size_t i = 0; i < n; ++i) {
    auto ex = threads > 1 ? asio::any_io_executor(asio::make_strand(io)) : asio::any_io_executor(io.get_executor());
    asio::co_spawn(
        ex,
        [](Countdown* e) -> asio::awaitable<void> {
          e->hit();
          co_return;
        }(&ended),
        asio::detached);
  }
  run_io(io, threads);
  return "\"ms\":" + std::to_string(ms_between(t0, ended.when()));
}

std::string bare_restart(std::size_t threads) {
  asio::io_context io(static_cast<int>(threads));
  std::size_t count = 0;
  double per_s = 0;
  asio::co_spawn(
      io,
      [](std::size_t* c, double* rate) -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        const auto t0 = clock_type::now();
        while (clock_type::now() - t0 < 500ms) {
          auto fail = []() -> asio::awaitable<void> {
            throw std::runtime_error("again");
            co_return;
          };
          auto [e] = co_await asio::co_spawn(ex, fail(), asio::as_tuple(asio::use_awaitable));
          if (e) ++*c;
        }
        *rate = static_cast<double>(*c) / std::chrono::duration<double>(clock_type::now() - t0).count();
      }(&count, &per_s),
      asio::detached);
  run_io(io, threads);
  return "\"per_s\":" + std::to_string(static_cast<long>(per_s));
}

std::vector<std::size_t> parse_list(const std::string& text) {
  std::vector<std::size_t> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::stoul(item));
  return out;
}

/// Runs one measurement in a child process; returns its JSON line.
std::string isolated(const std::function<std::string()>& measure) {
  int fds[2];
  if (pipe(fds) != 0) return {};
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    const std::string body = measure();
    const ssize_t ignored = write(fds[1], body.data(), body.size());
    (void)ignored;
    _exit(0);
  }
  close(fds[1]);
  std::string body;
  char buf[256];
  ssize_t got = 0;
  while ((got = read(fds[0], buf, sizeof buf)) > 0) body.append(buf, static_cast<std::size_t>(got));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? body : std::string();
}

/// One measurement: its JSON key ("ms", "bytes_per_service", "per_s"), its
/// value, and the field as printed.
struct Sample {
  std::string key;
  double value = 0;
  std::string field;
};

std::optional<Sample> parse_sample(const std::string& body) {
  const auto colon = body.find(':');
  if (body.empty() || colon == std::string::npos) return std::nullopt;
  return Sample{body.substr(0, colon), std::strtod(body.c_str() + colon + 1, nullptr), body};
}

std::string median_of(std::vector<Sample> samples) {
  std::sort(samples.begin(), samples.end(), [](const Sample& a, const Sample& b) { return a.value < b.value; });
  return samples[(samples.size() - 1) / 2].field;
}

const char* impl_name(bool is_pm) { return is_pm ? "pm" : "asio-baseline"; }

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::size_t> ns{1000, 10000, 100000};
  std::vector<std::size_t> thread_counts{1, 2};
  std::string which = "all";
  std::size_t repeat = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i];
    if (arg == "--n")
      ns = parse_list(argv[i + 1]);
    else if (arg == "--threads")
      thread_counts = parse_list(argv[i + 1]);
    else if (arg == "--scenario")
      which = argv[i + 1];
    else if (arg == "--repeat")
      repeat = std::max<std::size_t>(1, std::stoul(argv[i + 1]));
    else {
      std::fprintf(stderr, "usage: %s [--n 1000,10000,100000] [--threads 1,2] [--scenario NAME|all] [--repeat R]\n",
                   argv[0]);
      return 2;
    }
  }
  const std::vector<std::string> scenarios{"startup", "shutdown", "failure", "reload", "memory", "restart", "churn"};
  for (const auto& scenario : scenarios) {
    if (which != "all" && which != scenario) continue;
    for (const std::size_t threads : thread_counts) {
      const std::vector<std::size_t> sizes = scenario == "restart" ? std::vector<std::size_t>{1} : ns;
      for (const std::size_t n : sizes) {
        // The two impls take turns, so that a spell of machine noise hits
        // both; each prints the median of its repetitions.
        std::vector<Sample> samples[2];
        for (std::size_t rep = 0; rep < repeat; ++rep) {
          for (int k = 0; k < 2; ++k) {
            const bool is_pm = k == 0;
            std::fprintf(stderr, "pm_load: %s %s n=%zu threads=%zu (%zu/%zu)\n", scenario.c_str(), impl_name(is_pm), n,
                         threads, rep + 1, repeat);
            const std::string body = isolated([&]() -> std::string {
              if (scenario == "churn") return is_pm ? pm_churn(n, threads) : bare_churn(n, threads);
              if (scenario == "restart") return is_pm ? pm_restart(threads) : bare_restart(threads);
              return is_pm ? pm_scenario(scenario, n, threads) : bare_scenario(scenario, n, threads);
            });
            const auto sample = parse_sample(body);
            if (!sample) {
              std::fprintf(stderr, "pm_load: %s %s n=%zu threads=%zu failed\n", scenario.c_str(), impl_name(is_pm), n,
                           threads);
              return 1;
            }
            samples[k].push_back(*sample);
          }
        }
        for (int k = 0; k < 2; ++k) {
          std::printf("{\"scenario\":\"%s\",\"impl\":\"%s\",\"n\":%zu,\"threads\":%zu,%s}\n", scenario.c_str(),
                      impl_name(k == 0), n, threads, median_of(samples[k]).c_str());
        }
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
