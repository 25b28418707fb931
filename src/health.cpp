#include <processmanager/health.hpp>

#include <processmanager/runtime_guard.hpp>
#include <processmanager/task_scope.hpp>

#include <algorithm>
#include <array>
#include <limits>
#include <list>
#include <stdexcept>
#include <system_error>

#include "core/deadline.hpp"
#include "health_state.hpp"
#include "log.hpp"

namespace pm {

namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

using detail::Document;
using detail::DocumentQueue;
using detail::Request;
using detail::Response;
using detail::status_slice;
using detail::text;
using detail::tuple_token;
using State = detail::HealthState;

bool is_oversize(const boost::system::error_code& ec) {
  return ec == http::error::body_limit || ec == http::error::header_limit || ec == http::error::buffer_overflow;
}

/// Errors that mean the client went away or was timed out: no answer.
bool is_gone(const boost::system::error_code& ec) {
  return ec == beast::error::timeout || ec == asio::error::operation_aborted || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == http::error::end_of_stream || ec == http::error::partial_message;
}

/// The most a request may span: `max_request_bytes`, within what the
/// parser's header limit (32 bits) can hold.
std::uint32_t header_limit(std::size_t max_request_bytes) {
  return static_cast<std::uint32_t>(
      std::min<std::size_t>(max_request_bytes, std::numeric_limits<std::uint32_t>::max()));
}

/// After an answer that ends a request half read (400, 413): stop sending,
/// then read and drop what the client still sends, for a short while, so
/// that closing does not reset the connection before the client has read
/// the answer.
asio::awaitable<void> linger(std::shared_ptr<detail::HealthConnection> conn,
                             std::chrono::steady_clock::duration timeout) {
  beast::tcp_stream& stream = conn->stream;
  boost::system::error_code ec;
  stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  if (ec) co_return;
  stream.expires_after(std::min<std::chrono::steady_clock::duration>(timeout, std::chrono::seconds(1)));
  std::array<char, 4096> sink{};
  for (std::size_t drained = 0; drained < std::size_t{1024} * 1024;) {
    auto [rec, n] = co_await stream.async_read_some(asio::buffer(sink), tuple_token);
    if (rec) break;
    drained += n;
  }
}

/// A connection's place in the server's list, held by its session
/// coroutine as a parameter: the place is given up when the coroutine's
/// frame goes, also if it never ran (its io_context was destroyed first).
class Registration {
 public:
  using Place = std::list<std::shared_ptr<detail::HealthConnection>>::iterator;
  Registration(std::shared_ptr<State> s, Place place) : s_(std::move(s)), place_(place) {}
  Registration(Registration&& other) noexcept : s_(std::move(other.s_)), place_(other.place_) {}
  Registration(const Registration&) = delete;
  Registration& operator=(const Registration&) = delete;
  Registration& operator=(Registration&&) = delete;
  ~Registration() {
    if (!s_) return;
    if ((*place_)->evicted) --s_->evicting;
    s_->connections.erase(place_);
  }
  const std::shared_ptr<detail::HealthConnection>& connection() const { return *place_; }

 private:
  std::shared_ptr<State> s_;
  Place place_;
};

/// How long a slice of the /status document may hold the executor.

/// Lets go of a document; its last holder (every holder is on the
/// server's executor) frees it a few megabytes at a time, giving the
/// executor back in between: the 70 MB of /metrics at 100,000 services
/// freed at once hold it for about 9 ms (their pages are unmapped).
asio::awaitable<void> release_document(Document doc) {
  if (!doc || doc.use_count() > 1) co_return;
  const auto ex = co_await asio::this_coro::executor;
  std::size_t freed = 0;
  for (auto& part : *doc) {
    freed += part.size();
    std::string().swap(part);
    if (freed >= std::size_t{2} * 1024 * 1024) {
      freed = 0;
      co_await asio::post(ex, asio::use_awaitable);
    }
  }
}

/// One connection: requests answered in turn until the client closes, is
/// too slow, sends something unacceptable, is evicted, or the server stops.
asio::awaitable<void> session(std::shared_ptr<State> s, Registration registration, bool overloaded) {
  const std::shared_ptr<detail::HealthConnection>& conn = registration.connection();
  beast::tcp_stream& stream = conn->stream;
  if (s->closing || conn->evicted) co_return;  // accepted just before the stop, or evicted before it began
  const auto timeout = std::chrono::duration_cast<std::chrono::steady_clock::duration>(s->options.request_timeout);

  if (overloaded) {
    conn->answering = true;
    auto res = text(http::status::service_unavailable, "too many connections\n", 11);
    res.keep_alive(false);
    res.prepare_payload();
    stream.expires_after(timeout);
    auto [ec, n] = co_await http::async_write(stream, res, tuple_token);
    (void)ec;
    (void)n;
    co_return;
  }

  // The buffer never holds more than one request may span (a chunk
  // extension or trailer line too long fails the read), and every byte the
  // parser takes counts against the request's limit whatever the framing:
  // headers, body, chunk sizes and extensions, trailers.
  const std::size_t max_bytes = s->options.max_request_bytes;
  beast::flat_buffer buffer(max_bytes);
  for (;;) {
    if (s->closing || conn->evicted) co_return;
    conn->answering = false;  // idle or still reading: may be evicted
    http::request_parser<http::string_body> parser;
    parser.header_limit(header_limit(max_bytes));
    parser.body_limit(static_cast<std::uint64_t>(max_bytes));
    // The request line and headers must come within header_timeout of the
    // connection's start or of the previous answer: a slowloris, or an idle
    // keep-alive connection, holds a place for that long only. The whole
    // request, a body included, must come within request_timeout.
    const auto began = std::chrono::steady_clock::now();
    stream.expires_at(detail::sat_add(began, std::min(s->options.header_timeout, s->options.request_timeout)));
    boost::system::error_code ec;
    std::size_t taken = 0;
    bool header_done = false;
    while (!parser.is_done()) {
      auto [rec, n] = co_await http::async_read_some(stream, buffer, parser, tuple_token);
      taken += n;
      if (rec) {
        ec = rec;
        break;
      }
      if (taken > max_bytes) {
        ec = http::error::body_limit;
        break;
      }
      if (!header_done && parser.is_header_done()) {
        header_done = true;
        stream.expires_at(detail::sat_add(began, s->options.request_timeout));
      }
    }
    if (conn->evicted) co_return;
    conn->answering = true;
    Response res;
    bool close = false;
    if (ec) {
      if (is_oversize(ec)) {
        res = text(http::status::payload_too_large, "request too large\n", 11);
      } else if (is_gone(ec)) {
        co_return;
      } else {
        res = text(http::status::bad_request, "malformed request: " + ec.message() + "\n", 11);
      }
      // The rest of the stream cannot be trusted: answer, then close.
      res.keep_alive(false);
      res.prepare_payload();
      stream.expires_after(timeout);
      auto [wec, wn] = co_await http::async_write(stream, res, tuple_token);
      (void)wn;
      conn->answering = false;  // lingering: may be evicted
      if (!wec) {
        auto lingering = linger(conn, timeout);  // a named local: see "GCC 12" in the README
        co_await std::move(lingering);
      }
      co_return;
    }
    const auto& req = parser.get();
    close = !req.keep_alive();
    const std::string_view path = State::path_of(req);
    if (const HealthRoute* route = s->route_for(path)) {
      auto serving = detail::health_route(s, *route, req);  // a named local: see "GCC 12" in the README
      res = co_await std::move(serving);
      if (s->closing || conn->evicted) co_return;
    } else if (DocumentQueue* q = s->document_for(req)) {
      auto waiting = detail::health_document(s, q, conn);  // a named local: see "GCC 12" in the README
      Document doc = co_await std::move(waiting);
      if (s->closing || conn->evicted) co_return;
      if (doc) {
        // The header, then the document itself: shared by every request
        // that waited for it, never copied into a response.
        std::size_t length = 0;
        for (const auto& part : *doc) length += part.size();
        http::response<http::empty_body> head{http::status::ok, req.version()};
        head.set(http::field::content_type, q->kind == DocumentQueue::Kind::status
                                                ? "application/json"
                                                : "text/plain; version=0.0.4; charset=utf-8");
        head.set(http::field::cache_control, "no-store");
        head.content_length(length);
        head.keep_alive(!close);
        stream.expires_after(timeout);
        auto [wec, wn] = co_await http::async_write(stream, head, tuple_token);
        (void)wn;
        if (!wec && req.method() != http::verb::head) {
          std::vector<asio::const_buffer> buffers;
          for (const auto& part : *doc) buffers.push_back(asio::buffer(part));
          auto [bec, bn] = co_await asio::async_write(stream, buffers, tuple_token);
          (void)bn;
          wec = bec;
        }
        auto releasing = release_document(std::move(doc));  // a named local: see "GCC 12" in the README
        co_await std::move(releasing);
        if (wec || close) break;
        continue;
      }
      res =
          text(http::status::service_unavailable, std::string(path.substr(1)).append(" unavailable\n"), req.version());
    } else if (const auto kind = s->probe_of(req)) {
      const std::string_view target(req.target().data(), req.target().size());
      const std::string_view query = target.size() > path.size() ? target.substr(path.size() + 1) : std::string_view{};
      auto probing =
          detail::health_probe(s, s->answer(req), *kind, query, req.version());  // a named local: see "GCC 12"
      res = co_await std::move(probing);
      if (s->closing || conn->evicted) co_return;
    } else {
      res = s->answer(req);
    }
    if (req.method() == http::verb::head) {
      const auto length = res.body().size();
      res.body().clear();
      res.keep_alive(!close);
      res.content_length(length);
    } else {
      res.keep_alive(!close);
      res.prepare_payload();
    }
    stream.expires_after(timeout);
    auto [wec, wn] = co_await http::async_write(stream, res, tuple_token);
    (void)wn;
    if (wec || close) break;
  }
  boost::system::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
}
}  // namespace

ChildFactory health_server(HealthOptions options, std::string name) {
  return [options = std::move(options), name = std::move(name)](const std::shared_ptr<ProcessManager>& tree) {
    return std::make_shared<HealthServer>(tree, options, name);
  };
}

HealthServer::HealthServer(const std::shared_ptr<ProcessManager>& tree, HealthOptions options, std::string name) {
  if (!tree) throw std::invalid_argument("HealthServer '" + name + "': the tree is null");
  if (options.request_timeout.count() <= 0 || options.header_timeout.count() <= 0 || options.max_request_bytes == 0 ||
      options.max_connections == 0) {
    throw std::invalid_argument(
        "HealthServer '" + name +
        "': request_timeout, header_timeout, max_request_bytes and max_connections must be positive");
  }
  boost::system::error_code ec;
  (void)asio::ip::make_address(options.address, ec);
  if (ec) throw std::invalid_argument("HealthServer '" + name + "': '" + options.address + "' is not an IP address");
  detail::validate_health_extras(options, name);
  state_ = std::make_shared<detail::HealthState>(tree, std::move(options), std::move(name));
}

HealthServer::~HealthServer() = default;

std::string HealthServer::process_name() const { return state_->name; }

std::shared_ptr<ProcessControlHandler> HealthServer::process_handle() { return state_->guard.handle(); }

std::uint16_t HealthServer::port() const noexcept { return state_->port.load(std::memory_order_acquire); }

asio::awaitable<void> HealthServer::process_start() {
  const std::shared_ptr<State> s = state_;
  const auto ex = co_await asio::this_coro::executor;
  s->closing = false;
  s->guard.defer_readiness();  // ready once listening, not before

  tcp::acceptor acceptor(ex);
  const tcp::endpoint where(asio::ip::make_address(s->options.address), s->options.port);
  const std::string label =
      "HealthServer '" + s->name + "' on " + s->options.address + ":" + std::to_string(s->options.port);
  boost::system::error_code ec;
  // (open() returns void under BOOST_ASIO_NO_DEPRECATED: test ec, not its result.)
  acceptor.open(where.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(where, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw std::system_error(ec, label + ": cannot listen");

  // Whatever way this ends (shutdown, cancellation, a throw), nothing is
  // left listening or connected.
  struct Closer {
    State& s;
    tcp::acceptor& acceptor;
    ~Closer() {
      s.port.store(0, std::memory_order_release);
      boost::system::error_code ignored;
      acceptor.close(ignored);
      s.close_all();
    }
  } closer{*s, acceptor};

  s->port.store(acceptor.local_endpoint().port(), std::memory_order_release);
  // Ready once on_listening has run (and counted so under explicit_ready).
  s->guard.defer_readiness();
  auto ticker = co_await s->guard.runtime_ticker();
  detail::log_line(LogLevel::info, s->name,
                   "listening on http://" + s->options.address + ":" + std::to_string(s->port.load()) + "/");
  if (s->options.on_listening) s->options.on_listening(s->port.load());
  s->guard.ready();

  // Accept failures (out of descriptors, say) repeat at once while their
  // cause lasts, since the pending connection stays queued: the loop then
  // pauses, 5 ms doubling to 1 s, and logs once per episode.
  asio::steady_timer pause(ex);
  // The sessions: on the server's strand, closed and drained at the stop.
  TaskScope sessions(ex, {.name = s->name + " connections"});
  std::chrono::milliseconds backoff{0};
  std::size_t failures = 0;
  for (;;) {
    if (backoff.count() > 0) {
      pause.expires_after(backoff);
      auto op = co_await ticker.tick(pause.async_wait(asio::deferred));
      if (op.is_control() && op.control().is_shutdown()) break;
    }
    auto accept = acceptor.async_accept(asio::as_tuple(asio::deferred));
    auto op = co_await ticker.tick(std::move(accept));
    if (op.is_control()) {
      if (op.control().is_shutdown()) break;
      continue;  // reload and custom messages mean nothing here
    }
    auto [aec, socket] = std::move(op.next());
    if (aec == asio::error::operation_aborted) continue;  // the message that cancelled it is next
    if (aec) {
      // The server goes on; the client waits in the backlog, or sees its
      // connection refused or reset.
      if (failures++ == 0) {
        detail::log_line(LogLevel::warn, s->name,
                         "accept failed: " + aec.message() + "; retrying with backoff (logged once until it recovers)");
      }
      backoff = std::min<std::chrono::milliseconds>(
          std::max<std::chrono::milliseconds>(backoff * 2, std::chrono::milliseconds(5)), std::chrono::seconds(1));
      continue;
    }
    if (failures > 0) {
      detail::log_line(LogLevel::info, s->name,
                       "accepting again after " + std::to_string(failures) + " failed accepts");
      failures = 0;
      backoff = std::chrono::milliseconds(0);
    }
    // At the limit, an idle or slow connection makes room: a probe is never
    // starved by clients that send nothing (or slowly). Only when every
    // connection is being answered is the newcomer refused.
    bool overloaded = s->counted() >= s->options.max_connections && !s->evict_one();
    if (overloaded && s->counted() - s->options.max_connections >= s->options.max_connections)
      continue;  // closed unanswered
    auto conn = std::make_shared<detail::HealthConnection>(std::move(socket));
    conn->answering = overloaded;  // the 503 is not evicted
    Registration registration(s, s->connections.insert(s->connections.end(), std::move(conn)));
    sessions.spawn(session(s, std::move(registration), overloaded));
  }

  // Closing the connections ends their operations at once, and so their
  // sessions; a session held up longer (by a route of the user's that
  // ignores cancellation) is cancelled at the request timeout and left
  // behind a second later.
  acceptor.close(ec);
  s->close_all();
  DrainReport report;
  try {
    report = co_await sessions.drain(s->options.request_timeout, std::chrono::seconds(1));
  } catch (const boost::system::system_error& e) {
    // A forced stop cancelled the drain (and with it every session): the
    // server has stopped all the same.
    if (e.code() != asio::error::operation_aborted) throw;
  }
  if (!report.abandoned.empty()) {
    detail::log_line(
        LogLevel::warn, s->name,
        std::to_string(report.abandoned.size()) + " connection(s) did not end when cancelled; left behind");
  }
}

}  // namespace pm
