// HealthServer: HTTP liveness, readiness and status endpoints for a tree.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <processmanager/metrics.hpp>
#include <processmanager/process_manager.hpp>

namespace pm {

namespace detail {
struct HealthState;
}  // namespace detail

/// What a health check found: ok, or not and why.
struct HealthCheckResult {
  bool ok = true;      ///< the check passed
  std::string reason;  ///< why not, in a few words (shown by the probe's answer)
  /// A passing result.
  static HealthCheckResult healthy() { return {}; }
  /// A failing one, with its reason.
  static HealthCheckResult unhealthy(std::string why) { return {false, std::move(why)}; }
};

/// Which probe a check gates.
enum class CheckKind {
  readiness,  ///< GET /readyz
  liveness,   ///< GET /livez
};

/// A check of the user's own ("the database answers", "the cache is
/// warm"), run by a HealthServer when its probe is asked. It runs on the
/// server's executor; a check that has not answered within `timeout` of
/// its start counts as failed ("timed out"), is sent terminal cancellation,
/// and never holds up the probe. One run of a check is under way at a
/// time: probes that come meanwhile share its result, and while a run that
/// ignores its cancellation still hangs, the check keeps failing at once.
/// A check that throws fails with the exception's message.
struct HealthCheck {
  std::string name;                                            ///< shown in answers; unique per kind
  CheckKind kind = CheckKind::readiness;                       ///< the probe it gates
  std::function<asio::awaitable<HealthCheckResult>()> run;     ///< the check itself
  std::chrono::nanoseconds timeout = std::chrono::seconds(1);  ///< how long it may take
};

/// A HealthCheck made of a plain function. It runs on the server's
/// executor and cannot be interrupted: it must not block (one that does
/// blocks the server, whatever its timeout). Use HealthCheck::run with a
/// coroutine for a check that waits on I/O.
HealthCheck make_check(std::string name, CheckKind kind, std::function<HealthCheckResult()> check,
                       std::chrono::nanoseconds timeout = std::chrono::seconds(1));

/// A request to a route of the user's own (HealthRoute).
struct HealthRequest {
  std::string method;  ///< "GET", "POST", ...
  std::string target;  ///< as sent: "/debug?verbose"
  std::string path;    ///< the target without its query: "/debug"
  std::string query;   ///< after the '?', or empty: "verbose"
  std::string body;    ///< at most max_request_bytes in all
};

/// The answer of a route of the user's own.
struct HealthResponse {
  /// An HTTP status code, 200 to 599 (a 1xx is refused: 500); 204 and 304
  /// are sent without a body.
  unsigned status = 200;
  std::string content_type = "text/plain; charset=utf-8";  ///< the Content-Type header
  std::string body{};                                      ///< sent as it is (not for HEAD)
};

/// A route of the user's own on a HealthServer (a service's `/debug`
/// page, say): every method on exactly `path` goes to `handler`, on the
/// server's executor. A handler that throws gets its client a 500 naming
/// the route and the error (so does a content type with a control
/// character, or a status outside 200 to 599). A HEAD request gets the
/// handler's answer without the body. The handler runs as a coroutine of
/// its own: when the server stops, it is sent terminal cancellation and its
/// client's connection is closed, so it never holds up the tree's stop.
struct HealthRoute {
  std::string path;  ///< begins with '/'; not one of the server's own paths
  std::function<asio::awaitable<HealthResponse>(HealthRequest)> handler;  ///< answers it
};

/// Where a HealthServer listens and how it treats clients.
struct HealthOptions {
  std::string address = "127.0.0.1";  ///< the address to bind; loopback unless told otherwise
  std::uint16_t port = 0;             ///< 0 picks a free port (see HealthServer::port())
  /// A client must send each whole request, and take each response, within
  /// this; a slower one is disconnected.
  std::chrono::nanoseconds request_timeout = std::chrono::seconds(5);
  /// A client must send a request's line and headers within this (or
  /// request_timeout, if that is shorter) of connecting or of its previous
  /// answer; a slower one is disconnected unanswered. So an idle
  /// keep-alive connection is closed after it, and a slowloris client holds
  /// a connection for this long at most. A body may take the rest of
  /// request_timeout.
  std::chrono::nanoseconds header_timeout = std::chrono::seconds(2);
  /// A request larger than this gets 413: every byte of it counts, whatever
  /// its framing (request line and headers; a body by Content-Length, or
  /// chunked with its chunk sizes, extensions and trailers). The read
  /// buffer never grows beyond it either. Any value up to SIZE_MAX works.
  std::size_t max_request_bytes = 8192;
  /// At most this many connections count at once. A new one beyond it
  /// evicts (closes) the oldest connection that is idle or still sending its
  /// request, or else the oldest still waiting for the /status document, so
  /// idle or slow clients never starve a probe; only when every connection
  /// is being written its answer is it answered 503 and closed.
  std::size_t max_connections = 64;
  /// Called once listening, with the bound port (to print where to curl).
  std::function<void(std::uint16_t port)> on_listening{};
  /// Checks of the user's own that gate /readyz or /livez (HealthCheck).
  std::vector<HealthCheck> checks{};
  /// Routes of the user's own beside the server's (HealthRoute).
  std::vector<HealthRoute> routes{};
  /// Appends the user's own metric families to /metrics, after the
  /// library's, on the server's executor, once per document. A family
  /// that clashes with one already written, or any other refusal of the
  /// writer, is an exception: what the hook wrote is then left out (and
  /// logged), the library's families are still served.
  std::function<void(MetricsWriter&)> metrics{};
};

/// A service that answers Kubernetes-style probes about a tree over HTTP/1.1
/// (Boost.Beast):
/// - `GET /livez`: 200 while the tree runs, no child's heartbeat is stale
///   (ChildOptions::heartbeat_timeout) and every liveness check passes,
///   else 503 naming the stale children or the failing checks;
/// - `GET /readyz`: 200 only while every child is ready and every
///   readiness check passes; 503 from the moment shutdown begins (draining),
///   while a child restarts, or naming the failing checks and their
///   reasons. With `?verbose` (`/livez?verbose` too) the answer lists every
///   check, the tree first, as Kubernetes' API server does: `[+]tree ok`,
///   `[-]db failed: <reason>`, then `readyz check passed` (or failed);
/// - `GET /metrics`: the tree in the Prometheus text format 0.0.4
///   (docs/deployment.md lists the families), then the user's own
///   (HealthOptions::metrics); built in slices like /status. Counters never
///   go backwards while the process lives, across restarts of the services
///   they count and of the managers above them;
/// - `GET /status`: the tree's status() as JSON (status_json.hpp), built in
///   slices of at most about 0.25 ms that give the executor back in between
///   (a big tree's document takes a while, and the services beside the
///   server must not wait for it); requests that arrive while one is being
///   built share the next one.
/// `/livez` and `/readyz` read ProcessManager::health(), whose cost does not
/// grow with the number of services. Routes of the user's own
/// (HealthOptions::routes) are served beside these.
/// HEAD works like GET without the body. Another method gets 405 (with
/// Allow), another path 404, a malformed request 400, an oversized one 413.
/// If accepting fails (out of file descriptors), it retries with a growing
/// pause (5 ms up to 1 s) and logs once until an accept succeeds again.
///
/// It is ready once listening. It holds the tree weakly, so it can be a
/// child of the tree it reports on. On shutdown it stops accepting, closes
/// every connection at once and ends: it never holds up the tree's stop.
/// Failing to bind (port taken, bad address) fails it with the address in
/// the message.
class HealthServer : public Runnable {
 public:
  /// Throws std::invalid_argument for a null tree or nonsensical options
  /// (a check without a name, a function or a positive timeout, two checks
  /// of one kind with one name, a route not beginning with '/', on one of
  /// the server's paths, twice, or without a handler).
  explicit HealthServer(const std::shared_ptr<ProcessManager>& tree, HealthOptions options = {},
                        std::string name = "health");
  ~HealthServer() override;
  HealthServer(const HealthServer&) = delete;
  HealthServer& operator=(const HealthServer&) = delete;

  asio::awaitable<void> process_start() override;
  std::string process_name() const override;
  std::shared_ptr<ProcessControlHandler> process_handle() override;

  /// The port it listens on; 0 while it is not listening.
  std::uint16_t port() const noexcept;

 private:
  std::shared_ptr<detail::HealthState> state_;
};

/// A HealthServer for the manager being built, in the builder's chain:
/// `ProcessManagerBuilder().name("app").pre_insert(db)
/// .pre_insert_with(pm::health_server({.port = 8080})).build()`. The
/// options are checked when build() makes it (std::invalid_argument).
ChildFactory health_server(HealthOptions options = {}, std::string name = "health");

}  // namespace pm
