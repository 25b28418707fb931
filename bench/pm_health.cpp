// What answering probes costs the rest of a big tree: a manager with N idle
// services, a HealthServer and a "sibling" that waits on a 10 ms timer in a
// loop, all on one io thread (as pm::run runs a tree by default). Client
// threads (at the lowest priority: they stand for other machines) flood one
// endpoint over 127.0.0.1; the sibling records how late each of its timers
// fires. Prints one JSON object per run on stdout.
//
//   pm_health [--n 100000] [--clients 8] [--seconds 5] [--endpoint status|livez|readyz|none]
//             [--heartbeat] [--threads 1]
//
// --heartbeat gives every service a heartbeat_timeout (one hour: watched,
// never stale), the worst case for /livez. Beside the flood, a probe asks
// /livez every 10 ms, as a kubelet would (less often), and records how
// long each answer took.
#include <processmanager/processmanager.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace asio = pm::asio;
using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

struct Args {
  std::size_t n = 100000;
  std::size_t clients = 8;
  double seconds = 5;
  std::string endpoint = "status";
  bool heartbeat = false;
  std::size_t threads = 1;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--heartbeat") {
      a.heartbeat = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s needs a value\n", k.c_str());
      std::exit(2);
    }
    const std::string v = argv[++i];
    if (k == "--n") {
      a.n = std::stoul(v);
    } else if (k == "--clients") {
      a.clients = std::stoul(v);
    } else if (k == "--seconds") {
      a.seconds = std::stod(v);
    } else if (k == "--endpoint") {
      a.endpoint = v;
    } else if (k == "--threads") {
      a.threads = std::stoul(v);
    } else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      std::exit(2);
    }
  }
  return a;
}

/// An idle service: its ticker, then a one-hour timer until shutdown.
class Idle final : public pm::Runnable {
 public:
  asio::awaitable<void> process_start() override {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    auto ticker = co_await guard_.runtime_ticker();
    for (;;) {
      timer.expires_after(1h);
      auto op = co_await ticker.tick(timer.async_wait(asio::deferred));
      if (op.is_control() && op.control().is_shutdown()) co_return;
    }
  }
  std::string process_name() const override { return "idle"; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard_.handle(); }

 private:
  pm::RuntimeGuard guard_{"idle"};
};

/// Waits on a 10 ms timer in a loop and records how late each one fired.
class Sibling final : public pm::Runnable {
 public:
  asio::awaitable<void> process_start() override {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    auto ticker = co_await guard_.runtime_ticker();
    for (;;) {
      const auto due = clock_type::now() + 10ms;
      timer.expires_at(due);
      auto op = co_await ticker.tick(timer.async_wait(asio::deferred));
      if (op.is_control()) {
        if (op.control().is_shutdown()) co_return;
        continue;
      }
      if (measuring.load()) {
        const double late = std::chrono::duration<double, std::milli>(clock_type::now() - due).count();
        std::lock_guard lock(mu);
        lateness.push_back(late);
      }
    }
  }
  std::string process_name() const override { return "sibling"; }
  std::shared_ptr<pm::ProcessControlHandler> process_handle() override { return guard_.handle(); }

  std::atomic<bool> measuring{false};
  std::mutex mu;
  std::vector<double> lateness;

 private:
  pm::RuntimeGuard guard_{"sibling"};
};

/// One GET with Connection: close; the response's size, 0 on failure.
std::size_t get(std::uint16_t port, const std::string& target) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::size_t total = 0;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0) {
    const std::string req = "GET " + target + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
      char buf[65536];
      for (ssize_t n = 0; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) total += static_cast<std::size_t>(n);
    }
  }
  ::close(fd);
  return total;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto at = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  return v[at];
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  pm::set_log_level(pm::LogLevel::warn);
  asio::io_context io(static_cast<int>(args.threads));
  auto manager = pm::ProcessManagerBuilder().name("big").build();
  std::promise<std::uint16_t> listening;
  auto health = std::make_shared<pm::HealthServer>(
      manager, pm::HealthOptions{.max_connections = 256,
                                 .on_listening = [&listening](std::uint16_t p) { listening.set_value(p); }});
  auto sibling = std::make_shared<Sibling>();
  manager->insert(health);
  manager->insert(sibling);
  pm::ChildOptions options;
  if (args.heartbeat) options.heartbeat_timeout = 1h;
  for (std::size_t i = 0; i < args.n; ++i) manager->insert(std::make_shared<Idle>(), options);

  asio::co_spawn(asio::make_strand(io), manager->process_start(), asio::detached);
  std::vector<std::thread> pool;
  for (std::size_t i = 0; i < args.threads; ++i) pool.emplace_back([&io] { io.run(); });
  const std::uint16_t port = listening.get_future().get();
  while (!manager->is_ready()) std::this_thread::sleep_for(10ms);  // a benchmark's pacing, not a test

  // A quiet second first: the sibling's lateness without clients.
  sibling->measuring = true;
  std::this_thread::sleep_for(1s);
  std::vector<double> quiet;
  {
    std::lock_guard lock(sibling->mu);
    quiet.swap(sibling->lateness);
  }

  std::atomic<bool> stop{false};
  std::atomic<std::size_t> requests{0};
  std::atomic<std::size_t> bytes{0};
  std::mutex lat_mu;
  std::vector<double> latencies;
  std::vector<std::thread> clients;
  const std::string target = "/" + args.endpoint;
  const auto t0 = clock_type::now();
  for (std::size_t i = 0; i < (args.endpoint == "none" ? 0 : args.clients); ++i) {
    clients.emplace_back([&] {
      // The clients stand for other machines (a kubelet): at the lowest
      // priority, they do not take this machine's cores from the tree.
      (void)::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), 19);
      std::vector<double> mine;
      while (!stop.load()) {
        const auto a = clock_type::now();
        const std::size_t got = get(port, target);
        mine.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - a).count());
        if (got > 0) {
          requests.fetch_add(1);
          bytes.fetch_add(got);
        }
      }
      std::lock_guard lock(lat_mu);
      latencies.insert(latencies.end(), mine.begin(), mine.end());
    });
  }
  std::vector<double> probe;
  std::thread prober([&] {
    while (!stop.load()) {
      const auto a = clock_type::now();
      (void)get(port, "/livez");
      probe.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - a).count());
      std::this_thread::sleep_until(a + 10ms);
    }
  });
  std::this_thread::sleep_for(std::chrono::duration<double>(args.seconds));
  stop = true;
  for (auto& c : clients) c.join();
  prober.join();
  const double elapsed = std::chrono::duration<double>(clock_type::now() - t0).count();
  sibling->measuring = false;
  std::vector<double> loaded;
  {
    std::lock_guard lock(sibling->mu);
    loaded.swap(sibling->lateness);
  }
  manager->process_handle()->request_shutdown();
  for (auto& t : pool) t.join();

  const std::size_t count = requests.load();
  std::printf(
      "{\"endpoint\":\"%s\",\"n\":%zu,\"clients\":%zu,\"threads\":%zu,\"heartbeat\":%s,\"requests\":%zu,"
      "\"per_second\":%.1f,\"bytes_per_response\":%zu,\"latency_ms_p50\":%.2f,\"latency_ms_max\":%.1f,"
      "\"quiet_late_ms_max\":%.2f,\"late_ms_p50\":%.2f,\"late_ms_p99\":%.2f,\"late_ms_max\":%.2f,\"timers\":%zu,"
      "\"livez_ms_p50\":%.2f,\"livez_ms_max\":%.1f}\n",
      args.endpoint.c_str(), args.n, args.clients, args.threads, args.heartbeat ? "true" : "false", count,
      static_cast<double>(count) / elapsed, count == 0 ? 0 : bytes.load() / count, percentile(latencies, 0.5),
      percentile(latencies, 1.0), percentile(quiet, 1.0), percentile(loaded, 0.5), percentile(loaded, 0.99),
      percentile(loaded, 1.0), loaded.size(), percentile(probe, 0.5), percentile(probe, 1.0));
  return 0;
}
