// The HealthServer's state and the parts of it that live in their own
// files: health.cpp (accepting, sessions), health_documents.cpp (/status
// and /metrics, built in slices), health_checks.cpp (checks of the user's
// own, routes of the user's own). Internal to the library.
#pragma once

#include <processmanager/health.hpp>
#include <processmanager/runtime_guard.hpp>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <atomic>
#include <chrono>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "metrics_stream.hpp"

namespace pm::detail {

namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

inline constexpr auto tuple_token = asio::as_tuple(asio::use_awaitable);

using Response = http::response<http::string_body>;
using Request = http::request<http::string_body>;
/// A document built in slices (/status, /metrics): its parts, sent in order.
/// Read only once built; not const so that its last holder can free it
/// a few parts at a time (release_document()).
using Document = std::shared_ptr<std::vector<std::string>>;

inline Response text(http::status status, std::string body, unsigned version) {
  Response res{status, version};
  res.set(http::field::content_type, "text/plain; charset=utf-8");
  res.set(http::field::cache_control, "no-store");
  res.body() = std::move(body);
  return res;
}

/// How long a slice of a /status or /metrics document may hold the executor.
inline constexpr auto status_slice = std::chrono::microseconds(250);

/// One accepted connection, registered at accept so that the accept loop
/// can evict it even before its session began.
struct HealthConnection {
  explicit HealthConnection(tcp::socket socket) : stream(std::move(socket)) {}
  beast::tcp_stream stream;
  bool answering = false;  // a whole request arrived and its answer is being written: not evictable
  bool evicted = false;    // closed by the accept loop to make room
  // Set while it waits for the /status document (answering, but nothing
  // written yet): evictable after the idle ones, and this wakes it.
  asio::steady_timer* status_wake = nullptr;
};

/// A request waiting for a document: woken (its timer cancelled) with the
/// document, or with none when the server stops.
struct StatusWait {
  asio::steady_timer* wake;
  Document* document;
  bool served = false;  // the document came (the builder may finish before the wait begins)
};

/// The requests for one kind of document (/status, /metrics): one
/// document is built at a time, in slices, and every request that arrived
/// before it began gets it (a flood of requests costs one build at a time,
/// and one copy of the document).
struct DocumentQueue {
  enum class Kind { status, metrics } kind;
  std::vector<StatusWait*> waiting;  // for the next document
  std::vector<StatusWait*> serving;  // for the one being built
  bool building = false;
  std::size_t size = 0;  // of the last document
};

/// One HealthCheck's runs: at most one under way, shared by the probes
/// that ask meanwhile.
struct CheckRun {
  bool running = false;
  bool cancelled = false;        // its timeout passed and it was told so
  std::uint64_t generation = 0;  // of the run under way, or of the last one
  std::uint64_t answered = 0;    // the generation `result` belongs to
  std::chrono::steady_clock::time_point started{};
  HealthCheckResult result;
  std::vector<asio::steady_timer*> waiters;  // woken when the run under way answers
  // The run's cancellation, owned by its completion handler: a signal kept
  // here would outlive the io_context (the server's state does) and its
  // slot's handler would touch the destroyed strand when it goes.
  std::weak_ptr<asio::cancellation_signal> cancel;
};

/// A route handler's call under way: its answer, and the session waiting.
struct RouteCall {
  std::optional<HealthResponse> out;
  std::string error;  // what the handler threw
  bool done = false;
  asio::steady_timer* wake = nullptr;  // the waiting session's; null once it stopped waiting
  asio::cancellation_signal cancel;
};

struct HealthState {
  std::weak_ptr<ProcessManager> tree;
  HealthOptions options;
  std::string name;
  RuntimeGuard guard;
  std::atomic<std::uint16_t> port{0};
  // On the server's executor only.
  std::list<std::shared_ptr<HealthConnection>> connections;  // every open one, oldest first (accept order)
  std::size_t evicting = 0;  // evicted, their session not ended yet: not counted against the limit
  bool closing = false;
  DocumentQueue status{DocumentQueue::Kind::status, {}, {}, false, 0};
  DocumentQueue metrics{DocumentQueue::Kind::metrics, {}, {}, false, 0};
  CounterFloors floors;                           // /metrics' counters, kept monotonic
  std::vector<std::unique_ptr<CheckRun>> checks;  // beside options.checks
  std::vector<RouteCall*> route_calls;            // handlers under way

  HealthState(const std::shared_ptr<ProcessManager>& t, HealthOptions o, std::string n)
      : tree(t), options(std::move(o)), name(std::move(n)), guard(name) {
    for (std::size_t i = 0; i < options.checks.size(); ++i) checks.push_back(std::make_unique<CheckRun>());
  }

  /// Connections that count against max_connections.
  std::size_t counted() const { return connections.size() - evicting; }

  static void close(HealthConnection& c) {
    boost::system::error_code ignored;
    c.stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    c.stream.socket().close(ignored);
  }

  /// Closes the oldest connection that is idle or still sending its
  /// request (a slow or idle client), or else the oldest still waiting for
  /// the /status document (many clients asking for it at once must not
  /// starve a probe either), to make room for a new one. False when every
  /// connection is being written its answer.
  bool evict_one() {
    for (const bool status_too : {false, true}) {
      for (auto& c : connections) {
        if (c->evicted || (c->answering && !(status_too && c->status_wake != nullptr))) continue;
        c->evicted = true;
        ++evicting;
        close(*c);
        if (c->status_wake != nullptr) c->status_wake->cancel();
        return true;
      }
    }
    return false;
  }

  void close_all() {
    closing = true;
    for (auto& c : connections) close(*c);
    for (auto* q : {&status, &metrics}) {
      for (auto* w : q->waiting) w->wake->cancel();
      for (auto* w : q->serving) w->wake->cancel();
    }
    for (auto* c : route_calls) {
      if (c->wake != nullptr) c->wake->cancel();
      c->cancel.emit(asio::cancellation_type::terminal);
    }
    for (auto& r : checks) {
      for (auto* w : r->waiters) w->cancel();
      if (r->running && !r->cancelled) {
        r->cancelled = true;
        if (auto signal = r->cancel.lock()) signal->emit(asio::cancellation_type::terminal);
      }
    }
  }

  /// The answer to a request from the tree alone: not for a route of the
  /// user's, a document built in slices (document_for) or the user's
  /// checks (probe()).
  Response answer(const http::request<http::string_body>& req) const {
    const std::string_view target = path_of(req);
    const unsigned version = req.version();
    if (target != "/livez" && target != "/readyz" && target != "/status" && target != "/metrics") {
      return text(http::status::not_found, "no such endpoint; try /livez, /readyz, /status or /metrics\n", version);
    }
    if (req.method() != http::verb::get && req.method() != http::verb::head) {
      auto res = text(http::status::method_not_allowed, "only GET and HEAD\n", version);
      res.set(http::field::allow, "GET, HEAD");
      return res;
    }
    const auto t = tree.lock();
    if (!t) return text(http::status::service_unavailable, "the tree is gone\n", version);
    if (target == "/status" || target == "/metrics") {
      return text(http::status::service_unavailable, std::string(target.substr(1)).append(" unavailable\n"), version);
    }
    // health(), not status(): its cost does not grow with the number of
    // services, and probes come often.
    if (target == "/readyz") {
      if (t->is_ready()) return text(http::status::ok, "ready\n", version);
      const ChildState st = t->health().state;
      return text(http::status::service_unavailable,
                  st == ChildState::stopping ? "stopping\n" : "not ready (" + std::string(to_string(st)) + ")\n",
                  version);
    }
    const HealthSummary h = t->health();
    if (h.state == ChildState::stopped || h.state == ChildState::failed) {
      return text(http::status::service_unavailable, "not running (" + std::string(to_string(h.state)) + ")\n",
                  version);
    }
    if (h.stale == 0) return text(http::status::ok, "alive\n", version);
    std::string body = "stale heartbeat:";
    for (const auto& p : h.stale_paths) body.append(" ").append(p);
    return text(http::status::service_unavailable, body + "\n", version);
  }

  static std::string_view path_of(const http::request<http::string_body>& req) {
    std::string_view target(req.target().data(), req.target().size());
    if (const auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
    return target;
  }
  /// The document a request asks for (a GET or HEAD of /status or
  /// /metrics, of a tree still there), or null.
  DocumentQueue* document_for(const http::request<http::string_body>& req) {
    if ((req.method() != http::verb::get && req.method() != http::verb::head) || tree.expired()) return nullptr;
    const std::string_view path = path_of(req);
    if (path == "/status") return &status;
    if (path == "/metrics") return &metrics;
    return nullptr;
  }
  /// The user's route at `path`, or null.
  const HealthRoute* route_for(std::string_view path) const {
    for (const auto& r : options.routes) {
      if (r.path == path) return &r;
    }
    return nullptr;
  }
  /// The probe a request asks for with the checks that gate it (a GET or
  /// HEAD of /readyz or /livez, of a tree still there), or none.
  std::optional<CheckKind> probe_of(const http::request<http::string_body>& req) const {
    if ((req.method() != http::verb::get && req.method() != http::verb::head) || tree.expired()) return std::nullopt;
    const std::string_view path = path_of(req);
    if (path == "/readyz") return CheckKind::readiness;
    if (path == "/livez") return CheckKind::liveness;
    return std::nullopt;
  }
};

/// A document of `q`'s kind, once a build that began after this call
/// ends; null when the server stops first, the tree is gone or the build
/// failed (or the connection was evicted meanwhile: then it is not used).
asio::awaitable<Document> health_document(std::shared_ptr<HealthState> s, DocumentQueue* q,
                                          std::shared_ptr<HealthConnection> conn);

/// /readyz or /livez with the user's checks of that kind: the tree's own
/// answer (`tree`), then every check, run at once.
asio::awaitable<Response> health_probe(std::shared_ptr<HealthState> s, Response tree, CheckKind kind,
                                       std::string_view query, unsigned version);

/// A request to a route of the user's own, answered by its handler.
asio::awaitable<Response> health_route(std::shared_ptr<HealthState> s, const HealthRoute& route, const Request& req);

/// The checks' and routes' part of the HealthServer constructor's checks.
void validate_health_extras(const HealthOptions& options, const std::string& name);

}  // namespace pm::detail
