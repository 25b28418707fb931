// A manager's shared core: its events, and the control messages, reloads
// and shutdowns sent to it from any thread.
#include <typeinfo>

#include "run_state.hpp"

namespace pm::detail {

std::shared_ptr<ManagerCore> ManagerCore::flush_queued() {
  std::shared_ptr<ManagerCore> passed_up;
  for (;;) {
    std::vector<std::pair<Event, Origin>> batch;
    std::shared_ptr<ManagerCore> up;
    std::shared_ptr<const Observers> watchers;
    {
      std::lock_guard lock(mu);
      if (dispatching || events.empty()) return passed_up;
      dispatching = true;
      batch.swap(events);
      has_events.store(false, std::memory_order_relaxed);
      if (forward.load(std::memory_order_relaxed)) up = parent.lock();
      watchers = observers;
    }
    for (auto& [ev, origin] : batch) {
      if (origin == Origin::self) {
        if (!watchers) continue;
        for (const auto& [id, fn] : *watchers) {
          try {
            fn(ev);
          } catch (...) {
            // As for the hook: one observer's exception stops nothing.
          }
        }
        continue;
      }
      // A nested manager logged its own events already.
      if (origin == Origin::own) log_event(ev);
      if (hook) {
        try {
          hook(ev);
        } catch (...) {
          // A hook that throws must not stop the story for the others.
        }
      }
      if (up) {
        std::lock_guard lock(up->mu);
        up->queue(ev, true);  // its path is full already
      }
    }
    if (up) passed_up = std::move(up);
    std::vector<std::shared_ptr<Waiter>> done;
    {
      std::lock_guard lock(mu);
      dispatching = false;
      if (events.empty()) {
        done.swap(drained);
      }
    }
    // A run that ended while we delivered completes now: its caller sees
    // every event of it delivered.
    for (auto& w : done) w->complete(true);
    if (done.empty() && !has_events.load(std::memory_order_acquire)) return passed_up;
  }
}

ManagerCore::~ManagerCore() {
  // A chain of nested managers thousands deep would destroy itself by
  // recursion (core, its children, their cores, ...): the children are
  // let go here one level at a time instead.
  using Children = std::vector<std::pair<std::shared_ptr<Runnable>, std::shared_ptr<const ChildOptions>>>;
  thread_local std::vector<Children>* graveyard = nullptr;
  if (graveyard != nullptr) {
    graveyard->push_back(std::move(inserted));
    return;
  }
  std::vector<Children> pending_graves;
  pending_graves.push_back(std::move(inserted));
  graveyard = &pending_graves;
  while (!pending_graves.empty()) {
    Children last = std::move(pending_graves.back());
    pending_graves.pop_back();
    last.clear();  // may push more
  }
  graveyard = nullptr;
}

void attach_parent(ManagerCore& nested, const std::shared_ptr<ManagerCore>& parent,
                   std::weak_ptr<ReadinessTarget> target) {
  std::shared_ptr<const PathLink> up;
  {
    std::lock_guard lock(parent->mu);
    up = parent->where;
  }
  auto where = std::make_shared<const PathLink>(PathLink{std::move(up), nested.name});
  const bool observed = parent->observed();
  std::lock_guard lock(nested.mu);
  nested.parent = parent;
  nested.where = std::move(where);
  nested.ready_target = std::move(target);
  nested.forward.store(observed, std::memory_order_relaxed);
}

void ManagerCore::control(RuntimeControlMessage msg, std::vector<std::shared_ptr<ProcessControlHandler>>* awaited) {
  // Counted work on the run's executor, taken while the run still accepts
  // and let go last: control() may come from a thread that runs no
  // io_context, and the run may end while this thread still holds its
  // children (and their strands) here. Without it, io.run() could return
  // and the io_context be destroyed under this thread.
  std::optional<asio::any_io_executor> work;
  std::shared_ptr<ManagerRun> run;  // released after the lock
  Actions act;
  {
    std::lock_guard lock(mu);
    run = current.lock();
    if (!run || !run->accepting) {
      // Sent to a run that is finishing: it belongs to that run, and must
      // not stop the next one. Sent while none runs: kept for the next.
      if (msg.is_shutdown() && (run || closing)) return;
      pending.push_back(std::move(msg));
      return;
    }
    work.emplace(asio::prefer(run->base, asio::execution::outstanding_work.tracked));
    if (msg.is_shutdown()) {
      // A manager asks each child to stop once: a second shutdown (a second
      // signal, a parent's stop after a failure here) changes nothing.
      run->begin_stop(clock::now(), act);
    } else {
      act.tell.reserve(run->live);
      for (ChildNode* n = run->head; n != nullptr; n = n->next) {
        const ProcessControlHandler& h = *n->handle;
        if (awaited != nullptr && typeid(h) != typeid(GuardState)) {
          awaited->push_back(n->handle);
        } else {
          act.tell.push_back(n->handle);
        }
      }
      if (observed()) {
        for (ChildNode* n = run->head; n != nullptr; n = n->next) {
          Event ev;
          ev.kind = EventKind::control;
          ev.path = event_path(n->name);
          ev.time = now_us();
          ev.control = msg.kind();
          queue(std::move(ev));
        }
      }
    }
  }
  ReadyNotice readiness;
  if (msg.is_shutdown()) {
    std::lock_guard lock(mu);
    run->update_ready(readiness);
  }
  notify_ready(readiness);
  flush();
  if (msg.is_shutdown()) {
    deliver_stop(*run, act);
  } else {
    tell_all(act.tell, msg);
  }
  // Observers hear of a message once every child has it: a reload
  // observed is a reload handed out. A shutdown they hear as the state
  // "stopping", in order; a notice here could come after "stopped".
  if (!msg.is_shutdown() && watched.load(std::memory_order_acquire)) {
    {
      std::lock_guard lock(mu);
      Event ev;
      ev.kind = EventKind::control;
      ev.control = msg.kind();
      ev.time = now_us();
      queue_self(std::move(ev));
    }
    flush();
  }
}

asio::awaitable<void> ManagerCore::reload() {
  std::vector<std::shared_ptr<ProcessControlHandler>> awaited;
  control(RuntimeControlMessage::reload(), &awaited);
  if (awaited.empty()) co_return;
  auto ex = co_await asio::this_coro::executor;
  struct Join {
    std::mutex mu;
    std::size_t left = 0;
    std::shared_ptr<Waiter> waiter;
  };
  // Every child's reload() at once, on the caller's executor: the slowest
  // one, not their sum, is what the caller waits.
  auto start = [&awaited, &ex](auto handler) {
    // Copied out of the frame first: the last reload to end completes the
    // waiter, and this frame may then resume and end on another thread
    // while this loop still runs.
    auto handles = std::move(awaited);
    const auto where = ex;  // NOLINT(performance-unnecessary-copy-initialization): outlives the frame
    auto join = std::make_shared<Join>();
    join->left = handles.size();
    join->waiter = Waiter::make(std::move(handler), true);
    // A handle's reload() that throws (from its coroutine, or before it
    // has one) has still ended its part.
    auto ended = [join] {
      std::shared_ptr<Waiter> last;
      {
        std::lock_guard lock(join->mu);
        if (--join->left == 0) last = join->waiter;
      }
      if (last) last->complete(true);
    };
    for (auto& h : handles) {
      asio::awaitable<void> one;
      try {
        one = h->reload();
      } catch (...) {
        ended();
        continue;
      }
      asio::co_spawn(where, std::move(one), [ended](const std::exception_ptr&) { ended(); });
    }
  };
  co_await asio::async_initiate<const asio::use_awaitable_t<>&, void(boost::system::error_code, bool)>(
      std::move(start), asio::use_awaitable);
}

asio::awaitable<void> ManagerCore::shutdown() {
  auto self = shared_from_this();
  control(RuntimeControlMessage::shutdown());
  // Named, not a temporary of the co_await expression: GCC 12 destroys such
  // temporaries twice when they span the suspension (STYLE.md).
  // Waits that ended early (cancelled) are taken off the list by the next
  // one, so a loop of cancelled waits during a long stop does not grow it.
  // Not by the ending wait itself: that would need the run, and holding it
  // from another io_context could make that thread the run's last owner,
  // destroying its children's strands after their io_context is gone.
  auto wait_stopped = [self](auto handler) {
    auto w = Waiter::make(std::move(handler), true);
    std::shared_ptr<ManagerRun> run;  // released after the lock
    {
      std::lock_guard lock(self->mu);
      run = self->current.lock();
      if (run && run->accepting) {
        std::erase_if(run->stopped_waiters, [](const std::shared_ptr<Waiter>& x) { return x->ended(); });
        run->stopped_waiters.push_back(std::move(w));
        return;
      }
    }
    w->complete(true);
  };
  co_await asio::async_initiate<const asio::use_awaitable_t<>&, void(boost::system::error_code, bool)>(
      std::move(wait_stopped), asio::use_awaitable);
}

}  // namespace pm::detail
