#include <processmanager/systemd.hpp>

#include <processmanager/runtime_guard.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <stdexcept>

#include "log.hpp"

namespace pm {

namespace {

using clock = std::chrono::steady_clock;

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);  // NOLINT(concurrency-mt-unsafe): read once, at construction
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

/// The bounds of the watchdog period in use. Below the floor, WATCHDOG=1
/// would go out thousands of times a second (WATCHDOG_USEC=1 meant one
/// datagram every 0.5 us); above the ceiling, the period's arithmetic in
/// nanoseconds would overflow. Pinging more often than asked is harmless,
/// so the ceiling only makes a huge period a merely long one.
constexpr std::chrono::microseconds min_watchdog = std::chrono::milliseconds(20);
constexpr std::chrono::microseconds max_watchdog = std::chrono::hours(24 * 366);

/// WATCHDOG_USEC, when it is meant for this process: a count, or an
/// explanation of why it is not one (`error`).
std::optional<std::chrono::microseconds> watchdog_from_env(std::string& error) {
  auto usec = env("WATCHDOG_USEC");
  if (!usec) return std::nullopt;
  // The watchdog is meant for the process systemd started, not for a child
  // that inherited the environment.
  if (auto pid = env("WATCHDOG_PID")) {
    if (*pid != std::to_string(::getpid())) return std::nullopt;
  }
  const bool digits = std::all_of(usec->begin(), usec->end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!digits || std::all_of(usec->begin(), usec->end(), [](char c) { return c == '0'; })) {
    error = "WATCHDOG_USEC '" + *usec + "' is not a positive integer";
    return std::nullopt;
  }
  // Saturating: a number beyond what fits is simply a very long period.
  constexpr auto cap = static_cast<unsigned long long>(max_watchdog.count());
  unsigned long long v = 0;
  for (char c : *usec) {
    v = v * 10U + static_cast<unsigned long long>(c - '0');
    if (v > cap) return max_watchdog;
  }
  return std::chrono::microseconds(static_cast<std::chrono::microseconds::rep>(v));
}

/// A text made safe for a "STATUS=" line: a control character (a newline
/// above all, which would start a line of its own, "READY=1" or
/// "MAINPID=...") becomes '?'.
std::string status_line(std::string_view text) {
  std::string out = "STATUS=";
  out.reserve(out.size() + text.size());
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    out.push_back(u < 0x20 || u == 0x7f ? '?' : c);
  }
  return out;
}

std::uint64_t monotonic_usec() {
  // CLOCK_MONOTONIC, what systemd compares MONOTONIC_USEC with.
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000U + static_cast<std::uint64_t>(ts.tv_nsec) / 1000U;
}

/// "ready: 5 of 5 services running, 5 ready", "stopping: 2 of 5 services
/// running, 0 ready", ... From health(): the notifier asks at every change
/// of the tree's state, and a snapshot of a big tree costs far more.
std::string summary(const HealthSummary& h) {
  std::string out = std::string(to_string(h.state));
  out.append(": ")
      .append(std::to_string(h.running))
      .append(" of ")
      .append(std::to_string(h.services))
      .append(" services running, ")
      .append(std::to_string(h.ready_services))
      .append(" ready");
  if (h.restarting > 0) out.append(", ").append(std::to_string(h.restarting)).append(" restarting");
  return out;
}

}  // namespace

struct SystemdNotifier::State {
  // A notifier beside the tree keeps it; one inside it (systemd_notifier())
  // must not, or the tree would own itself.
  std::weak_ptr<ProcessManager> tree;
  std::shared_ptr<ProcessManager> owned;
  std::string tree_name;
  SystemdOptions options;
  sockaddr_un addr{};
  socklen_t addr_len = 0;
  int fd = -1;
  bool enabled = false;
  std::atomic<bool> warned{false};
  RuntimeGuard guard{"systemd-notifier"};

  ~State() {
    if (fd >= 0) ::close(fd);
  }

  bool send(std::string_view message) {
    if (!enabled) return false;
    const ssize_t n = ::sendto(fd, message.data(), message.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
                               reinterpret_cast<const sockaddr*>(&addr), addr_len);  // NOLINT: the sockets API
    if (n == static_cast<ssize_t>(message.size())) return true;
    const int err = errno;
    // One warning per notifier: a missing listener would otherwise flood the log.
    if (!warned.exchange(true)) {
      detail::log_line(LogLevel::warn, tree_name,
                       "systemd notify to '" + *options.socket + "' failed: " + std::strerror(err));
    }
    return false;
  }
};

SystemdNotifier::SystemdNotifier(std::shared_ptr<ProcessManager> tree, SystemdOptions options)
    : state_(std::make_shared<State>()) {
  if (!tree) throw std::invalid_argument("SystemdNotifier: the tree is null");
  if (!options.socket) options.socket = env("NOTIFY_SOCKET");
  if (!options.watchdog) {
    // A malformed WATCHDOG_USEC costs the watchdog only, never READY=1
    // and the rest: said once, here.
    std::string error;
    options.watchdog = watchdog_from_env(error);
    if (!error.empty()) {
      detail::log_line(LogLevel::warn, tree->process_name(), "systemd watchdog off: " + error);
    }
  }
  if (options.watchdog && options.watchdog->count() <= 0) {
    throw std::invalid_argument("SystemdNotifier of '" + tree->process_name() + "': the watchdog must be positive");
  }
  if (options.watchdog && (*options.watchdog < min_watchdog || *options.watchdog > max_watchdog)) {
    const auto asked = *options.watchdog;
    options.watchdog = std::clamp(asked, min_watchdog, max_watchdog);
    detail::log_line(LogLevel::warn, tree->process_name(),
                     "systemd watchdog period of " + std::to_string(asked.count()) + " us is outside [" +
                         std::to_string(min_watchdog.count()) + ", " + std::to_string(max_watchdog.count()) +
                         "] us; using " + std::to_string(options.watchdog->count()) + " us");
  }
  if (options.extend_interval.count() <= 0) {
    throw std::invalid_argument("SystemdNotifier of '" + tree->process_name() + "': extend_interval must be positive");
  }
  State& s = *state_;
  s.tree = tree;
  s.tree_name = tree->process_name();
  s.owned = std::move(tree);
  if (options.socket) {
    const std::string& where = *options.socket;
    const bool abstract = where.front() == '@';
    if (!abstract && where.front() != '/') {
      throw std::invalid_argument("SystemdNotifier of '" + s.tree_name + "': notify socket '" + where +
                                  "' is neither an absolute path nor an abstract '@name'");
    }
    if (where.size() >= sizeof(s.addr.sun_path) || where.size() < 2) {
      throw std::invalid_argument("SystemdNotifier of '" + s.tree_name + "': notify socket '" + where +
                                  "' has no name or is longer than a unix socket address allows");
    }
    s.addr.sun_family = AF_UNIX;
    std::memcpy(s.addr.sun_path, where.data(), where.size());
    if (abstract) s.addr.sun_path[0] = '\0';  // Linux's abstract namespace: the name is not 0-terminated
    s.addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + where.size() + (abstract ? 0 : 1));
    s.fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s.fd < 0) {
      detail::log_line(LogLevel::warn, s.tree_name,
                       std::string("systemd notify disabled: socket() failed: ") + std::strerror(errno));
    } else {
      s.enabled = true;
    }
  }
  s.options = std::move(options);
}

SystemdNotifier::~SystemdNotifier() = default;

bool SystemdNotifier::enabled() const noexcept { return state_->enabled; }

std::optional<std::chrono::microseconds> SystemdNotifier::watchdog() const noexcept { return state_->options.watchdog; }

bool SystemdNotifier::send(std::string_view message) { return state_->send(message); }

void SystemdNotifier::stop() { state_->guard.handle()->request_shutdown(); }

asio::awaitable<void> SystemdNotifier::run() {
  // The frame keeps the state: stop() and the observer may outlive *this.
  const std::shared_ptr<State> s = state_;
  if (!s->enabled) co_return;
  // Held by the frame while it runs (never by the state): a notifier
  // inside its tree is no part of the tree's ownership.
  const std::shared_ptr<ProcessManager> tree_ref = s->tree.lock();
  if (!tree_ref) co_return;
  ProcessManager& tree = *tree_ref;
  const std::string name = tree.process_name();
  asio::steady_timer timer(co_await asio::this_coro::executor);
  auto ticker = co_await s->guard.runtime_ticker();

  // The tree's own events reach this loop as custom messages: the guard's
  // inbox is the thread-safe, lossless queue the observer needs.
  auto handle = s->guard.handle();
  const auto observation =
      tree.observe([handle](const Event& e) { handle->control(RuntimeControlMessage::custom(e)); });

  bool sent_ready = false;
  bool reloading = false;
  bool stopping = false;
  std::vector<std::string> withheld_for;  // the stale paths last reported; empty while fed
  bool ran = false;                       // the tree has been seen running: a later "stopped" is the end
  clock::time_point stop_began{};
  std::size_t last_live = 0;
  const auto period = s->options.watchdog ? std::optional<clock::duration>(*s->options.watchdog / 2) : std::nullopt;
  clock::time_point next_watchdog = clock::now();
  clock::time_point next_extend{};

  auto live_count = [&tree] { return tree.health().running; };
  auto extend = [&] {
    const auto usec = std::chrono::duration_cast<std::chrono::microseconds>(2 * s->options.extend_interval).count();
    s->send("EXTEND_TIMEOUT_USEC=" + std::to_string(usec) + "\n" + status_line(summary(tree.health())));
  };
  auto begin_stopping = [&] {
    if (stopping) return;
    stopping = true;
    stop_began = clock::now();
    last_live = live_count();
    s->send("STOPPING=1\nSTATUS=" + summary(tree.health()));
    extend();
    next_extend = stop_began + s->options.extend_interval;
  };
  // What the tree is now: also how the loop starts, since it may already be
  // running (or ready) when this begins.
  auto on_state = [&](ChildState st) {
    switch (st) {
      case ChildState::ready:
        ran = true;
        if (!sent_ready || reloading) {
          s->send("READY=1\nSTATUS=" + summary(tree.health()));
          sent_ready = true;
          reloading = false;
        } else {
          s->send(status_line(summary(tree.health())));
        }
        break;
      case ChildState::running:
        ran = true;
        if (sent_ready) s->send(status_line(summary(tree.health())));  // a child restarts: not ready for now
        break;
      case ChildState::stopping:
        ran = true;
        begin_stopping();
        break;
      default:
        break;
    }
  };
  on_state(tree.health().state);

  for (;;) {
    const auto now = clock::now();
    const HealthSummary health = tree.health();
    const ChildState st = health.state;
    if (ran && (st == ChildState::stopped || st == ChildState::failed)) {
      begin_stopping();  // a tree that stopped before we saw it begin
      s->send(status_line(summary(health)));
      co_return;
    }
    // The watchdog is judged only once the tree has begun: before, there is
    // nothing stale to name, and a tree not yet started is not unhealthy.
    const bool begun = ran || (st != ChildState::stopped && st != ChildState::failed);
    if (period && begun && now >= next_watchdog) {
      const auto& stale = health.stale_paths;
      if (stale.empty()) {
        s->send(withheld_for.empty() ? std::string("WATCHDOG=1")
                                     : "WATCHDOG=1\n" + status_line("healthy again; " + summary(health)));
      } else if (stale != withheld_for) {
        // Named whenever the set changes: also a child stale from its start,
        // and one that goes stale while another already is.
        std::string paths;
        for (const auto& p : stale) paths += (paths.empty() ? "" : ", ") + p;
        s->send(status_line("watchdog withheld: stale heartbeat: " + paths));
        detail::log_line(LogLevel::warn, name, "systemd watchdog withheld: stale heartbeat: " + paths);
      }
      withheld_for = stale;
      next_watchdog = now + *period;
    }
    if (stopping && now >= next_extend) {
      const std::size_t live = live_count();
      const bool within_bounds = now < stop_began + tree.shutdown_grace_period() + tree.abandon_timeout();
      if (within_bounds || live < last_live) extend();
      last_live = live;
      next_extend = now + s->options.extend_interval;
    }

    clock::time_point wake = clock::time_point::max();
    if (period && begun) wake = std::min(wake, next_watchdog);  // before, the tree's first event wakes it
    if (stopping) wake = std::min(wake, next_extend);
    timer.expires_at(wake);
    auto wait = timer.async_wait(asio::deferred);
    auto op = co_await ticker.tick(wait);
    if (op.is_next()) continue;
    const RuntimeControlMessage& msg = op.control();
    if (msg.is_shutdown()) {
      // Inside the tree, this comes once every other child has ended: the
      // stop's last word.
      if (!stopping) {
        begin_stopping();
      } else {
        s->send(status_line(summary(tree.health())));
      }
      co_return;
    }
    const Event* e = msg.custom_if<Event>();
    if (e == nullptr) continue;
    if (e->kind == EventKind::control && e->control == ControlKind::reload) {
      s->send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(monotonic_usec()) + "\n" + status_line("reloading"));
      reloading = true;
      // The reload is handed out; the tree may well be ready still.
      if (tree.is_ready()) on_state(ChildState::ready);
    } else if (e->kind == EventKind::state && e->state) {
      on_state(*e->state);
    }
  }
}

namespace detail {

/// A SystemdNotifier as a service of the tree it reports on. It stops last
/// (StopsLast): its manager tells it to stop only once every other child
/// has ended, so the whole stop is reported (STOPPING=1 when the tree's
/// stop begins, EXTEND_TIMEOUT_USEC while the rest stops), and its end is
/// the end of the stop.
class SystemdService final : public Runnable, public StopsLast {
 public:
  SystemdService(const std::shared_ptr<ProcessManager>& tree, SystemdOptions options, std::string name)
      : notifier_(tree, std::move(options)), name_(std::move(name)) {
    notifier_.state_->owned.reset();
  }
  asio::awaitable<void> process_start() override {
    if (notifier_.enabled()) {
      co_await notifier_.run();
      co_return;
    }
    // Nothing to tell: an ordinary, idle child until its manager stops.
    auto ticker = co_await notifier_.state_->guard.runtime_ticker();
    for (;;) {
      if ((co_await ticker.next_control()).is_shutdown()) co_return;
    }
  }
  std::string process_name() const override { return name_; }
  std::shared_ptr<ProcessControlHandler> process_handle() override { return notifier_.state_->guard.handle(); }

 private:
  SystemdNotifier notifier_;
  std::string name_;
};

}  // namespace detail

ChildFactory systemd_notifier(SystemdOptions options, std::string name) {
  if (name.empty()) throw std::invalid_argument("systemd_notifier: the service name is empty");
  return [options = std::move(options), name = std::move(name)](const std::shared_ptr<ProcessManager>& tree) {
    return std::make_shared<detail::SystemdService>(tree, options, name);
  };
}

}  // namespace pm
