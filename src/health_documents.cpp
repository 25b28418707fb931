// /status and /metrics: documents built a slice at a time, one at a time
// per kind, shared by every request that waits for the next one.
#include <algorithm>
#include <exception>

#include "health_state.hpp"
#include "log.hpp"
#include "status_stream.hpp"

namespace pm::detail {

namespace {

using State = HealthState;

/// What a document's builder makes of the tree, a slice at a time.
class DocumentBuilder {
 public:
  DocumentBuilder(State& s, DocumentQueue::Kind kind, std::shared_ptr<ManagerCore> core) : s_(s) {
    if (kind == DocumentQueue::Kind::status) {
      status_.emplace(std::move(core));
      // Room for about the last document and a bit: growing a string of
      // megabytes by doubling copies it whole, in one slice.
      text_.reserve(s.status.size + s.status.size / 8);
    } else {
      // Room for every service at once: health() counts them at one lock
      // per manager.
      const std::size_t services = summarize(core).services;
      metrics_.emplace(std::move(core), s.floors, services);
    }
  }
  /// Builds on for about `budget`; true once the document is whole.
  bool write_some(std::chrono::steady_clock::duration budget) {
    return status_ ? status_->write_some(text_, budget) : metrics_->write_some(budget);
  }
  /// The whole document, with the user's families for /metrics.
  std::vector<std::string> take() {
    if (status_) {
      s_.status.size = text_.size();
      return {std::move(text_)};
    }
    std::vector<std::string> parts = metrics_->take();
    if (s_.options.metrics) {
      std::string own;
      try {
        MetricsWriter writer(own, MetricsStream::family_names());
        s_.options.metrics(writer);
        parts.push_back(std::move(own));
      } catch (const std::exception& e) {
        log_line(LogLevel::warn, s_.name,
                 std::string("the metrics hook failed; its families are left out: ").append(e.what()));
      } catch (...) {
        log_line(LogLevel::warn, s_.name, "the metrics hook threw; its families are left out");
      }
    }
    return parts;
  }

 private:
  State& s_;
  std::optional<StatusStream> status_;
  std::optional<MetricsStream> metrics_;
  std::string text_;
};

/// Builds documents of one kind one at a time, each in slices that give
/// the executor back in between, for the requests waiting; ends when none
/// waits.
asio::awaitable<void> build_documents(std::shared_ptr<State> s, DocumentQueue* q) {
  struct Idle {
    DocumentQueue& q;
    ~Idle() { q.building = false; }  // also if the frame goes unfinished
  } idle{*q};
  const auto ex = co_await asio::this_coro::executor;
  while (!s->closing && !q->waiting.empty()) {
    // Whoever asks from now on waits for the next document: this one may
    // have read part of the tree before the request came.
    q->serving.insert(q->serving.end(), q->waiting.begin(), q->waiting.end());
    q->waiting.clear();
    Document document;
    try {
      std::shared_ptr<ManagerCore> core;
      if (const auto t = s->tree.lock()) core = CoreAccess::core(*t);
      if (core) {
        DocumentBuilder builder(*s, q->kind, std::move(core));
        while (!builder.write_some(status_slice)) {
          co_await asio::post(ex, asio::use_awaitable);  // what else is queued runs first
          if (s->closing) co_return;                     // the waiters were woken by close_all()
        }
        document = std::make_shared<std::vector<std::string>>(builder.take());
      }
    } catch (const std::exception& e) {
      log_line(LogLevel::warn, s->name, std::string("building a document failed: ").append(e.what()));
    }
    for (auto* w : q->serving) {
      *w->document = document;
      w->served = true;
      w->wake->cancel();
    }
    q->serving.clear();
  }
}

}  // namespace

asio::awaitable<Document> health_document(std::shared_ptr<HealthState> s, DocumentQueue* q,
                                          std::shared_ptr<HealthConnection> conn) {
  const auto ex = co_await asio::this_coro::executor;
  asio::steady_timer wake(ex, asio::steady_timer::time_point::max());
  Document document;
  StatusWait wait{&wake, &document};
  q->waiting.push_back(&wait);
  conn->status_wake = &wake;
  struct Unlist {  // whatever way this frame ends, the builder and the accept loop forget it
    DocumentQueue& q;
    HealthConnection& conn;
    StatusWait* w;
    ~Unlist() {
      conn.status_wake = nullptr;
      for (auto* list : {&q.waiting, &q.serving}) {
        list->erase(std::remove(list->begin(), list->end(), w), list->end());
      }
    }
  } unlist{*q, *conn, &wait};
  if (!q->building) {
    q->building = true;
    // It may run at once, on this very strand, and finish a small tree's
    // document before the wait below begins: hence `served`.
    asio::co_spawn(ex, build_documents(s, q), [name = s->name](const std::exception_ptr& e) {
      if (e) log_line(LogLevel::warn, name, "building a document ended with an error: " + describe(e));
    });
  }
  if (!wait.served && !s->closing) {
    auto [ec] = co_await wake.async_wait(tuple_token);
    (void)ec;  // cancelled: by the builder with the document, by close_all() or by an eviction
  }
  co_return document;
}

}  // namespace pm::detail
