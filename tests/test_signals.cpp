#include <processmanager/builtin/signals.hpp>

#include <gtest/gtest.h>

#include <unistd.h>
#include <csignal>

#include "support.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = pm::asio;
using pm::test::IdleService;

/// Where the test signals land: one thread, fully started, that waits in a
/// blocking call for the whole test, while every other thread of the test
/// blocks them. The kernel may hand a process-directed signal to any thread
/// that does not block it, and ThreadSanitizer (GCC 12's libtsan) runs a
/// handler at once only for a thread inside a blocking call. For any other
/// thread it defers the handler, and three ways of losing the signal were
/// measured (about 1 run in 30 under a storm of SIGHUPs):
/// - a signal landing on a thread that TSan is still starting is dropped;
/// - one landing on a thread that is exiting (a sender after its kill()) is
///   dropped;
/// - a storm of deferred handlers can leave the handling thread with every
///   signal blocked, so later signals wait in the kernel for ever.
/// Without TSan none of this happens (0 runs in 400); the catcher keeps the
/// tests about the receiver, not about TSan, in every build.
class SignalCatcher {
 public:
  /// Blocks the test signals in the calling thread (and so in every thread
  /// it starts from now on) and starts the catcher, which unblocks them.
  SignalCatcher() {
    const sigset_t set = signals();
    EXPECT_EQ(pthread_sigmask(SIG_BLOCK, &set, &caller_mask_), 0);
    thread_ = std::thread([this] {
      const sigset_t mine = signals();
      EXPECT_EQ(pthread_sigmask(SIG_UNBLOCK, &mine, nullptr), 0);
      catching_.set();
      finished_.wait();
    });
    EXPECT_TRUE(catching_.wait());
  }
  ~SignalCatcher() {
    finished_.set();
    thread_.join();
    pthread_sigmask(SIG_SETMASK, &caller_mask_, nullptr);
  }
  SignalCatcher(const SignalCatcher&) = delete;
  SignalCatcher& operator=(const SignalCatcher&) = delete;

 private:
  static sigset_t signals() {
    sigset_t set;
    sigemptyset(&set);
    for (int sig : {SIGHUP, SIGINT, SIGTERM, SIGQUIT}) sigaddset(&set, sig);
    return set;
  }

  sigset_t caller_mask_{};
  pm::test::Event catching_;
  pm::test::Event finished_;
  std::thread thread_;
};

/// Spins (yielding) until `ready` or until the hang guard expires, so a
/// driver thread cannot outlive a test whose io_context gave up.
template <class Pred>
bool wait_until(Pred ready) {
  const auto deadline = std::chrono::steady_clock::now() + pm::test::hang_guard;
  while (!ready()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

/// A tree of two idle services plus a receiver controlling it; `drive` runs
/// on a plain thread once every service is in its loop.
struct SignalledTree {
  std::shared_ptr<IdleService> a = std::make_shared<IdleService>("a");
  std::shared_ptr<IdleService> b = std::make_shared<IdleService>("b");
  std::shared_ptr<pm::ProcessManager> root =
      pm::ProcessManagerBuilder().name("root").pre_insert(a).pre_insert(b).build();
  std::shared_ptr<pm::SignalReceiver> receiver;

  std::exception_ptr run(pm::SignalReceiverOptions options, const std::function<void()>& drive) {
    SignalCatcher catcher;
    receiver = std::make_shared<pm::SignalReceiver>(root->process_handle(), std::move(options));
    root->insert(receiver);
    asio::io_context io(2);
    receiver->listen(asio::make_strand(io));  // signals are caught from here on
    std::exception_ptr error;
    bool done = false;
    asio::co_spawn(asio::make_strand(io), root->process_start(), [&](std::exception_ptr e) {
      error = e;
      done = true;
    });
    std::thread driver([&] {
      if (wait_until([this] { return a->started > 0 && b->started > 0; })) drive();
    });
    pm::test::run_io(io, 2);
    driver.join();
    EXPECT_TRUE(done);
    return error;
  }
};

TEST(signal_receiver, sigterm_stops_the_tree_gracefully_and_records_the_signal) {
  SignalledTree t;
  auto error = t.run({}, [] { ::kill(::getpid(), SIGTERM); });
  EXPECT_EQ(error, nullptr);  // a requested stop is not a failure
  EXPECT_EQ(t.receiver->stop_signal(), SIGTERM);
  EXPECT_EQ(t.a->shutdowns, 1);
  EXPECT_EQ(t.b->stopped, 1);
}

TEST(signal_receiver, sigquit_stops_the_tree_too) {
  SignalledTree t;
  EXPECT_EQ(t.run({}, [] { ::kill(::getpid(), SIGQUIT); }), nullptr);
  EXPECT_EQ(t.receiver->stop_signal(), SIGQUIT);
}

TEST(signal_receiver, sighup_broadcasts_reload_to_the_whole_tree) {
  SignalledTree t;
  auto error = t.run({}, [&t] {
    ::kill(::getpid(), SIGHUP);
    wait_until([&t] { return t.a->reloads > 0 && t.b->reloads > 0; });
    ::kill(::getpid(), SIGINT);
  });
  EXPECT_EQ(error, nullptr);
  EXPECT_EQ(t.receiver->reloads(), 1u);
  EXPECT_EQ(t.a->reloads, 1);
  EXPECT_EQ(t.b->reloads, 1);
}

TEST(signal_receiver, a_storm_of_sighups_never_loses_the_sigterm_after_it) {
  SignalledTree t;
  auto error = t.run({}, [] {
    for (int i = 0; i < 1000; ++i) ::kill(::getpid(), SIGHUP);
    ::kill(::getpid(), SIGTERM);
  });
  // Pending SIGHUPs coalesce, and the tree may stop before the receiver
  // gets to them: how many reloads happen is not promised. The stop is.
  EXPECT_EQ(error, nullptr);
  EXPECT_EQ(t.receiver->stop_signal(), SIGTERM);
  EXPECT_EQ(t.a->stopped, 1);
  EXPECT_EQ(t.b->stopped, 1);
}

TEST(signal_receiver, a_second_sigint_during_the_stop_escalates) {
  // A stubborn service keeps the stop going; the second SIGINT cancels it.
  auto stubborn = std::make_shared<IdleService>("stubborn", true);
  auto root = pm::ProcessManagerBuilder().shutdown_grace_period(std::chrono::hours(1)).pre_insert(stubborn).build();
  SignalCatcher catcher;
  asio::io_context io(2);
  asio::cancellation_signal cancel;
  auto root_strand = asio::make_strand(io);
  std::atomic<int> escalated{0};
  pm::SignalReceiverOptions options;
  options.escalate = [&](int sig) {
    escalated = sig;
    asio::post(root_strand, [&cancel] { cancel.emit(asio::cancellation_type::terminal); });
  };
  auto receiver = std::make_shared<pm::SignalReceiver>(root->process_handle(), options);
  auto receiver_strand = asio::make_strand(io);
  receiver->listen(receiver_strand);
  asio::co_spawn(receiver_strand, receiver->process_start(), asio::detached);
  bool done = false;
  asio::co_spawn(root_strand, root->process_start(),
                 asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr) {
                   done = true;
                   receiver->process_handle()->request_shutdown();
                 }));
  std::thread driver([&] {
    if (!wait_until([&] { return stubborn->started > 0; })) return;
    ::kill(::getpid(), SIGINT);
    if (!wait_until([&] { return stubborn->shutdowns > 0; })) return;
    ::kill(::getpid(), SIGINT);
  });
  pm::test::run_io(io, 2);
  driver.join();
  EXPECT_TRUE(done);
  EXPECT_EQ(escalated, SIGINT);
  EXPECT_EQ(receiver->escalation_signal(), SIGINT);
}

void noop_handler(int) {}

// Issue 12, item 3: asio's signal_set leaves SIG_DFL behind, so an ignored
// SIGHUP came back able to kill the process after the receiver ended.
TEST(signal_receiver, restores_every_disposition_it_found_when_it_ends) {
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  struct sigaction custom {};
  custom.sa_handler = noop_handler;
  sigemptyset(&custom.sa_mask);
  custom.sa_flags = SA_RESTART;
  struct sigaction hup_before {};
  struct sigaction quit_before {};
  ASSERT_EQ(::sigaction(SIGHUP, &ignore, &hup_before), 0);
  ASSERT_EQ(::sigaction(SIGQUIT, &custom, &quit_before), 0);
  sigset_t mask_before;
  ASSERT_EQ(pthread_sigmask(SIG_SETMASK, nullptr, &mask_before), 0);

  SignalledTree t;
  EXPECT_EQ(t.run({}, [] { ::kill(::getpid(), SIGTERM); }), nullptr);
  EXPECT_EQ(t.receiver->stop_signal(), SIGTERM);
  t.receiver.reset();
  t.root.reset();

  struct sigaction hup {};
  struct sigaction quit {};
  struct sigaction term {};
  ASSERT_EQ(::sigaction(SIGHUP, nullptr, &hup), 0);
  ASSERT_EQ(::sigaction(SIGQUIT, nullptr, &quit), 0);
  ASSERT_EQ(::sigaction(SIGTERM, nullptr, &term), 0);
  EXPECT_EQ(hup.sa_handler, SIG_IGN) << "an ignored SIGHUP must stay ignored";
  EXPECT_EQ(quit.sa_handler, &noop_handler);
  EXPECT_EQ(quit.sa_flags & SA_RESTART, SA_RESTART);
  EXPECT_EQ(term.sa_handler, SIG_DFL);
  sigset_t mask_after;
  ASSERT_EQ(pthread_sigmask(SIG_SETMASK, nullptr, &mask_after), 0);
  for (int sig = 1; sig < NSIG; ++sig) EXPECT_EQ(sigismember(&mask_before, sig), sigismember(&mask_after, sig)) << sig;

  ::sigaction(SIGHUP, &hup_before, nullptr);
  ::sigaction(SIGQUIT, &quit_before, nullptr);
}

TEST(signal_receiver, a_null_tree_is_rejected) {
  EXPECT_THROW(pm::SignalReceiver(nullptr), std::invalid_argument);
  EXPECT_EQ(pm::signal_name(SIGTERM), "SIGTERM");
}

}  // namespace
