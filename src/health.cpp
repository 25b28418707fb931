#include <processmanager/health.hpp>

#include <processmanager/runtime_guard.hpp>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <array>
#include <limits>
#include <list>
#include <stdexcept>
#include <system_error>

#include "core/deadline.hpp"
#include "log.hpp"
#include "status_stream.hpp"

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

/// A request waiting for the /status document: woken (its timer
/// cancelled) with the document, or with none when the server stops.
struct StatusWait {
  asio::steady_timer* wake;
  std::shared_ptr<const std::string>* document;
  bool served = false;  // the document came (the builder may finish before the wait begins)
};

struct HealthState {
  std::weak_ptr<ProcessManager> tree;
  HealthOptions options;
  std::string name;
  RuntimeGuard guard;
  std::atomic<std::uint16_t> port{0};
  // On the server's executor only.
  std::list<std::shared_ptr<HealthConnection>> connections;  // every open one, oldest first (accept order)
  std::size_t evicting = 0;               // evicted, their session not ended yet: not counted against the limit
  asio::steady_timer* drained = nullptr;  // the stop waits on it for the last connection
  bool closing = false;
  // /status: one document is built at a time, in slices, and every request
  // that arrived before it began gets it (a flood of requests costs one
  // build at a time, and one copy of the document).
  std::vector<StatusWait*> status_waiting;  // for the next document
  std::vector<StatusWait*> status_serving;  // for the one being built
  bool status_building = false;
  std::size_t status_size = 0;  // of the last document

  HealthState(const std::shared_ptr<ProcessManager>& t, HealthOptions o, std::string n)
      : tree(t), options(std::move(o)), name(std::move(n)), guard(name) {}

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
    for (auto* w : status_waiting) w->wake->cancel();
    for (auto* w : status_serving) w->wake->cancel();
  }

  /// The answer to a request, except a GET or HEAD of /status (see
  /// is_status), whose document is built in slices.
  Response answer(const http::request<http::string_body>& req) const {
    const std::string_view target = path_of(req);
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
    if (target == "/status") return text(http::status::service_unavailable, "status unavailable\n", version);
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
  /// A request for the /status document (GET or HEAD) of a tree still there.
  bool is_status(const http::request<http::string_body>& req) const {
    return path_of(req) == "/status" && (req.method() == http::verb::get || req.method() == http::verb::head) &&
           !tree.expired();
  }
};

}  // namespace detail

namespace {

using State = detail::HealthState;

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
    if (s_->connections.empty() && s_->drained != nullptr) s_->drained->cancel();
  }
  const std::shared_ptr<detail::HealthConnection>& connection() const { return *place_; }

 private:
  std::shared_ptr<State> s_;
  Place place_;
};

/// How long a slice of the /status document may hold the executor.
constexpr auto status_slice = std::chrono::microseconds(250);

/// Builds /status documents one at a time, each in slices that give the
/// executor back in between, for the requests waiting; ends when none waits.
asio::awaitable<void> build_status(std::shared_ptr<State> s) {
  struct Idle {
    State& s;
    ~Idle() { s.status_building = false; }  // also if the frame goes unfinished
  } idle{*s};
  const auto ex = co_await asio::this_coro::executor;
  while (!s->closing && !s->status_waiting.empty()) {
    // Whoever asks from now on waits for the next document: this one may
    // have read part of the tree before the request came.
    s->status_serving.insert(s->status_serving.end(), s->status_waiting.begin(), s->status_waiting.end());
    s->status_waiting.clear();
    std::shared_ptr<const std::string> document;
    try {
      std::shared_ptr<detail::ManagerCore> core;
      if (const auto t = s->tree.lock()) core = detail::CoreAccess::core(*t);
      if (core) {
        detail::StatusStream stream(std::move(core));
        auto text = std::make_shared<std::string>();
        // Room for about the last document and a bit: growing a string of
        // megabytes by doubling copies it whole, in one slice.
        text->reserve(s->status_size + s->status_size / 8);
        while (!stream.write_some(*text, status_slice)) {
          co_await asio::post(ex, asio::use_awaitable);  // what else is queued runs first
          if (s->closing) co_return;                     // the waiters were woken by close_all()
        }
        s->status_size = text->size();
        document = std::move(text);
      }
    } catch (const std::exception& e) {
      detail::log_line(LogLevel::warn, s->name, std::string("building /status failed: ").append(e.what()));
    }
    for (auto* w : s->status_serving) {
      *w->document = document;
      w->served = true;
      w->wake->cancel();
    }
    s->status_serving.clear();
  }
}

/// The /status document, once a build that began after this call ends;
/// null when the server stops first, the tree is gone or the build failed
/// (or the connection was evicted meanwhile: then it is not used).
asio::awaitable<std::shared_ptr<const std::string>> status_document(std::shared_ptr<State> s,
                                                                    std::shared_ptr<detail::HealthConnection> conn) {
  const auto ex = co_await asio::this_coro::executor;
  asio::steady_timer wake(ex, asio::steady_timer::time_point::max());
  std::shared_ptr<const std::string> document;
  detail::StatusWait wait{&wake, &document};
  s->status_waiting.push_back(&wait);
  conn->status_wake = &wake;
  struct Unlist {  // whatever way this frame ends, the builder and the accept loop forget it
    State& s;
    detail::HealthConnection& conn;
    detail::StatusWait* w;
    ~Unlist() {
      conn.status_wake = nullptr;
      for (auto* list : {&s.status_waiting, &s.status_serving}) {
        list->erase(std::remove(list->begin(), list->end(), w), list->end());
      }
    }
  } unlist{*s, *conn, &wait};
  if (!s->status_building) {
    s->status_building = true;
    // It may run at once, on this very strand, and finish a small tree's
    // document before the wait below begins: hence `served`.
    asio::co_spawn(ex, build_status(s), [name = s->name](const std::exception_ptr& e) {
      if (e) detail::log_line(LogLevel::warn, name, "building /status ended with an error: " + describe(e));
    });
  }
  if (!wait.served && !s->closing) {
    auto [ec] = co_await wake.async_wait(tuple_token);
    (void)ec;  // cancelled: by the builder with the document, by close_all() or by an eviction
  }
  co_return document;
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
    if (s->is_status(req)) {
      auto waiting = status_document(s, conn);  // a named local: see "GCC 12" in the README
      const std::shared_ptr<const std::string> document = co_await std::move(waiting);
      if (s->closing || conn->evicted) co_return;
      if (document) {
        // The header, then the document itself: shared by every request
        // that waited for it, never copied into a response.
        http::response<http::empty_body> head{http::status::ok, req.version()};
        head.set(http::field::content_type, "application/json");
        head.set(http::field::cache_control, "no-store");
        head.content_length(document->size());
        head.keep_alive(!close);
        stream.expires_after(timeout);
        auto [wec, wn] = co_await http::async_write(stream, head, tuple_token);
        (void)wn;
        if (!wec && req.method() != http::verb::head) {
          auto [bec, bn] = co_await asio::async_write(stream, asio::buffer(*document), tuple_token);
          (void)bn;
          wec = bec;
        }
        if (wec || close) break;
        continue;
      }
      res = text(http::status::service_unavailable, "status unavailable\n", req.version());
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
    asio::co_spawn(ex, session(s, std::move(registration), overloaded), [name = s->name](const std::exception_ptr& e) {
      if (e) detail::log_line(LogLevel::warn, name, "connection ended with an error: " + describe(e));
    });
  }

  // Closing the connections ends their operations at once; the sessions
  // unlist themselves, and the last one wakes this wait.
  acceptor.close(ec);
  s->close_all();
  if (!s->connections.empty()) {
    asio::steady_timer drained(ex, asio::steady_timer::time_point::max());
    s->drained = &drained;
    struct Forget {  // also if this frame is destroyed while it waits
      State& s;
      ~Forget() { s.drained = nullptr; }
    } forget{*s};
    auto [wec] = co_await drained.async_wait(tuple_token);
    (void)wec;
  }
}

}  // namespace pm
