// HealthServer: HTTP liveness, readiness and status endpoints for a tree.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <processmanager/process_manager.hpp>

namespace pm {

namespace detail {
struct HealthState;
}  // namespace detail

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
};

/// A service that answers Kubernetes-style probes about a tree over HTTP/1.1
/// (Boost.Beast):
/// - `GET /livez`: 200 while the tree runs and no child's heartbeat is stale
///   (ChildOptions::heartbeat_timeout), else 503 naming the stale children;
/// - `GET /readyz`: 200 only while every child is ready; 503 from the
///   moment shutdown begins (draining) or while a child restarts;
/// - `GET /status`: the tree's status() as JSON (status_json.hpp), built in
///   slices of at most about 0.25 ms that give the executor back in between
///   (a big tree's document takes a while, and the services beside the
///   server must not wait for it); requests that arrive while one is being
///   built share the next one.
/// `/livez` and `/readyz` read ProcessManager::health(), whose cost does not
/// grow with the number of services.
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
  /// Throws std::invalid_argument for a null tree or nonsensical options.
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
