// HealthServer's checks of the user's own (/readyz, /livez) and routes of
// the user's own.
#include <algorithm>
#include <exception>
#include <stdexcept>

#include "core/deadline.hpp"
#include "health_state.hpp"
#include "log.hpp"

namespace pm::detail {

namespace {

using State = HealthState;

/// A timeout in words: "300 ms", or finer when it is below a millisecond.
std::string words(std::chrono::nanoseconds d) {
  using namespace std::chrono;
  if (d >= milliseconds(1)) return std::to_string(duration_cast<milliseconds>(d).count()) + " ms";
  if (d >= microseconds(1)) return std::to_string(duration_cast<microseconds>(d).count()) + " us";
  return std::to_string(d.count()) + " ns";
}

/// One run of check `i`; a check function that throws before its
/// coroutine begins fails like one that throws within it.
asio::awaitable<HealthCheckResult> run_check(std::shared_ptr<State> s, std::size_t i) {
  auto running = s->options.checks[i].run();  // a named local: see "GCC 12" in the README
  co_return co_await std::move(running);
}

/// Starts a run of check `i` unless one is under way.
void start_check(const std::shared_ptr<State>& s, std::size_t i, const asio::any_io_executor& ex) {
  CheckRun& r = *s->checks[i];
  if (r.running) return;
  r.running = true;
  r.cancelled = false;
  r.started = std::chrono::steady_clock::now();
  const std::uint64_t generation = ++r.generation;
  auto finish = [s, i, generation](HealthCheckResult result) {
    CheckRun& run = *s->checks[i];
    if (run.generation != generation) return;
    run.running = false;
    run.result = std::move(result);
    run.answered = generation;
    for (auto* w : run.waiters) w->cancel();
  };
  auto failed = [](const std::exception_ptr& e) {
    return HealthCheckResult::unhealthy(std::string("threw: ").append(describe(e)));
  };
  auto signal = std::make_shared<asio::cancellation_signal>();
  r.cancel = signal;
  auto slot = signal->slot();
  asio::co_spawn(ex, run_check(s, i),
                 asio::bind_cancellation_slot(
                     slot, [finish, failed, signal](const std::exception_ptr& e, HealthCheckResult result) {
                       finish(e ? failed(e) : std::move(result));
                     }));
}

/// The result of check `i` for a probe: that of the run under way (one is
/// started if none is), or "timed out" once its timeout from the run's
/// start has passed (the run is then told to stop).
asio::awaitable<HealthCheckResult> check_result(std::shared_ptr<State> s, std::size_t i) {
  const auto ex = co_await asio::this_coro::executor;
  CheckRun& r = *s->checks[i];
  const HealthCheck& check = s->options.checks[i];
  start_check(s, i, ex);
  const std::uint64_t generation = r.generation;
  if (r.running) {
    asio::steady_timer wake(ex, sat_add(r.started, check.timeout));
    r.waiters.push_back(&wake);
    struct Unlist {
      CheckRun& r;
      asio::steady_timer* w;
      ~Unlist() { r.waiters.erase(std::remove(r.waiters.begin(), r.waiters.end(), w), r.waiters.end()); }
    } unlist{r, &wake};
    auto [ec] = co_await wake.async_wait(tuple_token);
    (void)ec;  // cancelled: the run answered, or the server stops
  }
  if (r.answered == generation) co_return r.result;
  if (s->closing) co_return HealthCheckResult::unhealthy("the server is stopping");
  if (r.running && r.generation == generation && !r.cancelled) {
    r.cancelled = true;
    if (auto signal = r.cancel.lock()) signal->emit(asio::cancellation_type::terminal);
  }
  co_return HealthCheckResult::unhealthy(std::string("timed out after ").append(words(check.timeout)));
}

/// Whether the query string holds `key` as a parameter ("verbose",
/// "verbose=1", "x&verbose").
bool has_param(std::string_view query, std::string_view key) {
  while (!query.empty()) {
    const auto amp = query.find('&');
    std::string_view param = query.substr(0, amp);
    param = param.substr(0, param.find('='));
    if (param == key) return true;
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return false;
}

/// A check's reason on one line: a line break in it must not forge lines
/// of the verbose answer ("[+]db ok").
std::string one_line(std::string reason) {
  std::replace_if(
      reason.begin(), reason.end(), [](char c) { return c == '\n' || c == '\r'; }, ' ');
  return reason;
}

/// A route's handler, called where it runs.
asio::awaitable<HealthResponse> run_route(std::shared_ptr<HealthState> s, const HealthRoute* route, HealthRequest in) {
  (void)s;  // held for the handler's sake: the route lives in the server's options
  auto handling = route->handler(std::move(in));  // a named local: see "GCC 12" in the README
  co_return co_await std::move(handling);
}

/// A plain function as a check's coroutine.
asio::awaitable<HealthCheckResult> call_sync(std::shared_ptr<const std::function<HealthCheckResult()>> f) {
  co_return (*f)();
}

}  // namespace

asio::awaitable<Response> health_probe(std::shared_ptr<HealthState> s, Response tree, CheckKind kind,
                                       std::string_view query, unsigned version) {
  const bool verbose = has_param(query, "verbose");
  const bool tree_ok = tree.result() == http::status::ok;
  std::vector<std::size_t> mine;
  for (std::size_t i = 0; i < s->options.checks.size(); ++i) {
    if (s->options.checks[i].kind == kind) mine.push_back(i);
  }
  // Not verbose: a tree that is not ready (or stopping) answers at once.
  if (!verbose && (!tree_ok || mine.empty())) co_return tree;
  const auto ex = co_await asio::this_coro::executor;
  for (const std::size_t i : mine) start_check(s, i, ex);  // all at once, then collected in turn
  std::vector<HealthCheckResult> results;
  for (const std::size_t i : mine) {
    auto waiting = check_result(s, i);  // a named local: see "GCC 12" in the README
    results.push_back(co_await std::move(waiting));
  }
  bool ok = tree_ok;
  for (const auto& r : results) ok = ok && r.ok;
  std::string body;
  const std::string_view probe_name = kind == CheckKind::readiness ? "readyz" : "livez";
  if (verbose) {
    std::string tree_text = tree.body();
    while (!tree_text.empty() && tree_text.back() == '\n') tree_text.pop_back();
    body.append(tree_ok ? "[+]tree ok\n" : "[-]tree failed: " + one_line(tree_text) + "\n");
    for (std::size_t k = 0; k < mine.size(); ++k) {
      const auto& name = s->options.checks[mine[k]].name;
      if (results[k].ok) {
        body.append("[+]").append(name).append(" ok\n");
      } else {
        body.append("[-]").append(name).append(" failed: ").append(one_line(results[k].reason)).append("\n");
      }
    }
    body.append(probe_name).append(ok ? " check passed\n" : " check failed\n");
  } else if (ok) {
    body = tree.body();
  } else {
    for (std::size_t k = 0; k < mine.size(); ++k) {
      if (results[k].ok) continue;
      body.append("check '").append(s->options.checks[mine[k]].name).append("' failed: ");
      body.append(one_line(results[k].reason)).append("\n");
    }
  }
  co_return text(ok ? http::status::ok : http::status::service_unavailable, std::move(body), version);
}

asio::awaitable<Response> health_route(std::shared_ptr<HealthState> s, const HealthRoute& route, const Request& req) {
  HealthRequest in;
  in.method = std::string(req.method_string());
  in.target = std::string(req.target());
  in.path = std::string(State::path_of(req));
  if (in.path.size() < in.target.size()) in.query = in.target.substr(in.path.size() + 1);
  in.body = req.body();
  // The handler runs as a coroutine of its own, which this session waits
  // for: a handler that never returns must not keep the session (and so
  // the server's stop) waiting once the server stops.
  const auto ex = co_await asio::this_coro::executor;
  auto call = std::make_shared<RouteCall>();
  asio::steady_timer wake(ex, asio::steady_timer::time_point::max());
  call->wake = &wake;
  s->route_calls.push_back(call.get());
  struct Unlist {
    HealthState& s;
    RouteCall& call;
    ~Unlist() {
      call.wake = nullptr;
      s.route_calls.erase(std::remove(s.route_calls.begin(), s.route_calls.end(), &call), s.route_calls.end());
    }
  } unlist{*s, *call};
  asio::co_spawn(
      ex, run_route(s, &route, std::move(in)),
      asio::bind_cancellation_slot(call->cancel.slot(), [call](const std::exception_ptr& e, HealthResponse out) {
        if (e) {
          call->error = describe(e);
        } else {
          call->out = std::move(out);
        }
        call->done = true;
        if (call->wake != nullptr) call->wake->cancel();
      }));
  if (!call->done && !s->closing) {
    auto [ec] = co_await wake.async_wait(tuple_token);
    (void)ec;  // cancelled: the handler answered, or the server stops
  }
  if (!call->done) co_return text(http::status::service_unavailable, "stopping\n", req.version());
  std::string error = std::move(call->error);
  std::optional<HealthResponse>& out = call->out;
  if (error.empty() && (out->status < 200 || out->status > 599)) {
    error =
        std::string("it answered with status ").append(std::to_string(out->status)) + " (a final status is 200 to 599)";
  }
  if (error.empty() && std::any_of(out->content_type.begin(), out->content_type.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return (u < 0x20 && c != '\t') || u == 0x7f;
      })) {
    error = "its content type holds a control character";
  }
  if (!error.empty()) {
    log_line(LogLevel::warn, s->name, "route " + route.path + " failed: " + error);
    co_return text(http::status::internal_server_error, "route " + route.path + " failed: " + error + "\n",
                   req.version());
  }
  Response res{static_cast<http::status>(out->status), req.version()};
  res.set(http::field::content_type, out->content_type);
  res.set(http::field::cache_control, "no-store");
  // 204 and 304 carry no body (the client would read the next answer's
  // bytes as this one's).
  if (out->status != 204 && out->status != 304) res.body() = std::move(out->body);
  co_return res;
}

void validate_health_extras(const HealthOptions& options, const std::string& name) {
  const std::string who = "HealthServer '" + name + "': ";
  for (std::size_t i = 0; i < options.checks.size(); ++i) {
    const HealthCheck& c = options.checks[i];
    const std::string which = std::string("check ").append(std::to_string(i)) + " ('" + c.name + "')";
    if (c.name.empty()) throw std::invalid_argument(who + which + " has no name");
    if (std::any_of(c.name.begin(), c.name.end(), [](char ch) { return static_cast<unsigned char>(ch) < 0x20; })) {
      throw std::invalid_argument(who + which + ": a name must not hold control characters");
    }
    if (!c.run) throw std::invalid_argument(who + which + " has no function");
    if (c.timeout.count() <= 0) throw std::invalid_argument(who + which + ": its timeout must be positive");
    for (std::size_t j = 0; j < i; ++j) {
      if (options.checks[j].name == c.name && options.checks[j].kind == c.kind) {
        throw std::invalid_argument(who + which + ": a check of that kind has that name already");
      }
    }
  }
  for (std::size_t i = 0; i < options.routes.size(); ++i) {
    const HealthRoute& r = options.routes[i];
    const std::string which = "route '" + r.path + "'";
    if (r.path.empty() || r.path.front() != '/' || r.path.find('?') != std::string::npos) {
      throw std::invalid_argument(who + which + ": a path begins with '/' and holds no query");
    }
    for (const char* own : {"/livez", "/readyz", "/status", "/metrics"}) {
      if (r.path == own) throw std::invalid_argument(who + which + " is one of the server's own");
    }
    if (!r.handler) throw std::invalid_argument(who + which + " has no handler");
    for (std::size_t j = 0; j < i; ++j) {
      if (options.routes[j].path == r.path) throw std::invalid_argument(who + which + " is given twice");
    }
  }
}

}  // namespace pm::detail

namespace pm {

HealthCheck make_check(std::string name, CheckKind kind, std::function<HealthCheckResult()> check,
                       std::chrono::nanoseconds timeout) {
  HealthCheck out{std::move(name), kind, nullptr, timeout};
  if (check) {
    // The function is handed to the coroutine by value (a lambda that is
    // itself a coroutine would leave its frame pointing at its captures).
    out.run = [f = std::make_shared<const std::function<HealthCheckResult()>>(std::move(check))] {
      return detail::call_sync(f);
    };
  }
  return out;
}

}  // namespace pm
