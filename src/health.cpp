#include <processmanager/health.hpp>

#include <processmanager/runtime_guard.hpp>
#include <processmanager/status_json.hpp>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <list>
#include <stdexcept>
#include <system_error>

#include "log.hpp"

namespace pm {

namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr auto tuple_token = asio::as_tuple(asio::use_awaitable);

using Response = http::response<http::string_body>;

Response text(http::status status, std::string body, unsigned version) {
  Response res{status, version};
  res.set(http::field::content_type, "text/plain; charset=utf-8");
  res.set(http::field::cache_control, "no-store");
  res.body() = std::move(body);
  return res;
}

bool is_oversize(const boost::system::error_code& ec) {
  return ec == http::error::body_limit || ec == http::error::header_limit || ec == http::error::buffer_overflow;
}

/// Errors that mean the client went away or was timed out: no answer.
bool is_gone(const boost::system::error_code& ec) {
  return ec == beast::error::timeout || ec == asio::error::operation_aborted || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == http::error::end_of_stream || ec == http::error::partial_message;
}

}  // namespace

namespace detail {

struct HealthState {
  std::weak_ptr<ProcessManager> tree;
  HealthOptions options;
  std::string name;
  RuntimeGuard guard;
  std::atomic<std::uint16_t> port{0};
  // On the server's executor only.
  std::list<beast::tcp_stream*> sessions;  // those whose coroutine has begun
  std::size_t connections = 0;             // counted at accept: the limit holds before a session begins
  asio::steady_timer* drained = nullptr;   // the stop waits on it for the last connection
  bool closing = false;

  HealthState(const std::shared_ptr<ProcessManager>& t, HealthOptions o, std::string n)
      : tree(t), options(std::move(o)), name(std::move(n)), guard(name) {}

  void close_all() {
    closing = true;
    for (auto* stream : sessions) {
      boost::system::error_code ignored;
      stream->socket().shutdown(tcp::socket::shutdown_both, ignored);
      stream->socket().close(ignored);
    }
  }

  Response answer(const http::request<http::string_body>& req) const {
    std::string_view target(req.target().data(), req.target().size());
    if (const auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
    const unsigned version = req.version();
    if (target != "/livez" && target != "/readyz" && target != "/status") {
      return text(http::status::not_found, "no such endpoint; try /livez, /readyz or /status\n", version);
    }
    if (req.method() != http::verb::get && req.method() != http::verb::head) {
      auto res = text(http::status::method_not_allowed, "only GET and HEAD\n", version);
      res.set(http::field::allow, "GET, HEAD");
      return res;
    }
    const auto t = tree.lock();
    if (!t) return text(http::status::service_unavailable, "the tree is gone\n", version);
    if (target == "/readyz") {
      if (t->is_ready()) return text(http::status::ok, "ready\n", version);
      const ChildState st = t->status().state;
      return text(http::status::service_unavailable,
                  st == ChildState::stopping ? "stopping\n" : "not ready (" + std::string(to_string(st)) + ")\n",
                  version);
    }
    const ChildStatus st = t->status();
    if (target == "/livez") {
      if (st.state == ChildState::stopped || st.state == ChildState::failed) {
        return text(http::status::service_unavailable, "not running (" + std::string(to_string(st.state)) + ")\n",
                    version);
      }
      const auto stale = stale_paths(st);
      if (stale.empty()) return text(http::status::ok, "alive\n", version);
      std::string body = "stale heartbeat:";
      for (const auto& p : stale) body += " " + p;
      return text(http::status::service_unavailable, body + "\n", version);
    }
    Response res{http::status::ok, version};
    res.set(http::field::content_type, "application/json");
    res.set(http::field::cache_control, "no-store");
    res.body() = boost::json::serialize(to_json(st));
    return res;
  }
};

}  // namespace detail

namespace {

using State = detail::HealthState;

/// One connection: requests answered in turn until the client closes, is
/// too slow, sends something unacceptable, or the server stops.
asio::awaitable<void> session(std::shared_ptr<State> s, tcp::socket socket, bool overloaded) {
  beast::tcp_stream stream(std::move(socket));
  auto it = s->sessions.insert(s->sessions.end(), &stream);
  struct Unlist {
    State& s;
    std::list<beast::tcp_stream*>::iterator it;
    ~Unlist() {
      s.sessions.erase(it);
      --s.connections;
      if (s.connections == 0 && s.drained != nullptr) s.drained->cancel();
    }
  } unlist{*s, it};
  if (s->closing) co_return;  // accepted just before the stop
  const auto timeout = std::chrono::duration_cast<std::chrono::steady_clock::duration>(s->options.request_timeout);

  if (overloaded) {
    auto res = text(http::status::service_unavailable, "too many connections\n", 11);
    res.keep_alive(false);
    res.prepare_payload();
    stream.expires_after(timeout);
    auto [ec, n] = co_await http::async_write(stream, res, tuple_token);
    (void)ec;
    (void)n;
    co_return;
  }

  beast::flat_buffer buffer;
  for (;;) {
    if (s->closing) co_return;
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(s->options.max_request_bytes));
    parser.body_limit(s->options.max_request_bytes);
    stream.expires_after(timeout);
    auto [ec, n] = co_await http::async_read(stream, buffer, parser, tuple_token);
    (void)n;
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
      close = true;  // the rest of the stream cannot be trusted
    } else {
      const auto& req = parser.get();
      res = s->answer(req);
      close = !req.keep_alive();
      if (req.method() == http::verb::head) {
        const auto length = res.body().size();
        res.body().clear();
        res.keep_alive(!close);
        res.content_length(length);
        stream.expires_after(timeout);
        auto [wec, wn] = co_await http::async_write(stream, res, tuple_token);
        (void)wn;
        if (wec || close) break;
        continue;
      }
    }
    res.keep_alive(!close);
    res.prepare_payload();
    stream.expires_after(timeout);
    auto [wec, wn] = co_await http::async_write(stream, res, tuple_token);
    (void)wn;
    if (wec || close) break;
  }
  boost::system::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
}

}  // namespace

HealthServer::HealthServer(const std::shared_ptr<ProcessManager>& tree, HealthOptions options, std::string name) {
  if (!tree) throw std::invalid_argument("HealthServer '" + name + "': the tree is null");
  if (options.request_timeout.count() <= 0 || options.max_request_bytes == 0 || options.max_connections == 0) {
    throw std::invalid_argument("HealthServer '" + name +
                                "': request_timeout, max_request_bytes and max_connections must be positive");
  }
  boost::system::error_code ec;
  (void)asio::ip::make_address(options.address, ec);
  if (ec) throw std::invalid_argument("HealthServer '" + name + "': '" + options.address + "' is not an IP address");
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
  auto ticker = co_await s->guard.runtime_ticker();
  detail::log_line(LogLevel::info, s->name,
                   "listening on http://" + s->options.address + ":" + std::to_string(s->port.load()) + "/");
  if (s->options.on_listening) s->options.on_listening(s->port.load());
  s->guard.ready();

  for (;;) {
    auto accept = acceptor.async_accept(asio::as_tuple(asio::deferred));
    auto op = co_await ticker.tick(std::move(accept));
    if (op.is_control()) {
      if (op.control().is_shutdown()) break;
      continue;  // reload and custom messages mean nothing here
    }
    auto [aec, socket] = std::move(op.next());
    if (aec == asio::error::operation_aborted) continue;  // the message that cancelled it is next
    if (aec) {
      // Out of descriptors and the like: the server goes on; the client
      // sees its connection refused or reset.
      detail::log_line(LogLevel::warn, s->name, "accept failed: " + aec.message());
      continue;
    }
    const bool overloaded = s->connections >= s->options.max_connections;
    if (overloaded && s->connections >= 2 * s->options.max_connections) continue;  // closed unanswered
    ++s->connections;
    asio::co_spawn(ex, session(s, std::move(socket), overloaded), [name = s->name](const std::exception_ptr& e) {
      if (e) detail::log_line(LogLevel::warn, name, "connection ended with an error: " + describe(e));
    });
  }

  // Closing the connections ends their operations at once; the sessions
  // unlist themselves, and the last one wakes this wait.
  acceptor.close(ec);
  s->close_all();
  if (s->connections > 0) {
    asio::steady_timer drained(ex, asio::steady_timer::time_point::max());
    s->drained = &drained;
    auto [wec] = co_await drained.async_wait(tuple_token);
    (void)wec;
    s->drained = nullptr;
  }
}

}  // namespace pm
