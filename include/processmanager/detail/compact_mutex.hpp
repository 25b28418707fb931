// CompactMutex: a mutex in four bytes, for state kept once per service.
#pragma once

#include <atomic>
#include <cstdint>

namespace pm::detail {

/// A Lockable mutex of four bytes. One per service lives in each guard's
/// state, where std::mutex's 40 bytes would be 4 MB at 100k services.
///
/// The classic three-state futex mutex: 0 free, 1 held, 2 held with
/// sleepers possible. Uncontended, lock() is one compare-exchange and
/// unlock() one exchange. Contended, lock() spins briefly, then sleeps
/// through C++20 atomic wait (a futex on Linux), and unlock() wakes one
/// sleeper. Not recursive; not fair. Unlike std::mutex, it must outlive
/// every unlock() in flight, since unlock() wakes a sleeper after letting
/// go: the guard's state is held by shared_ptr by whoever calls into it.
class CompactMutex {
 public:
  CompactMutex() = default;
  CompactMutex(const CompactMutex&) = delete;
  CompactMutex& operator=(const CompactMutex&) = delete;

  void lock() noexcept {
    std::uint32_t seen = 0;
    if (!state_.compare_exchange_strong(seen, 1, std::memory_order_acquire, std::memory_order_relaxed))
      lock_contended();
  }
  bool try_lock() noexcept {
    std::uint32_t seen = 0;
    return state_.compare_exchange_strong(seen, 1, std::memory_order_acquire, std::memory_order_relaxed);
  }
  void unlock() noexcept {
    if (state_.exchange(0, std::memory_order_release) == 2) state_.notify_one();
  }

 private:
  void lock_contended() noexcept;

  std::atomic<std::uint32_t> state_{0};
};

}  // namespace pm::detail
