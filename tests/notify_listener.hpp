// A systemd notify socket for tests: binds a unix datagram socket (a path,
// or an abstract "@name") and collects every datagram sent to it.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace pm::test {

class NotifyListener {
 public:
  /// `where`: an absolute path or "@name".
  explicit NotifyListener(std::string where) : where_(std::move(where)) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw std::runtime_error("socket() failed");
    const auto [addr, len] = address();
    if (where_.front() == '/') ::unlink(where_.c_str());
    if (::bind(fd_, reinterpret_cast<const sockaddr*>(&addr), len) != 0) {
      throw std::runtime_error("bind(" + where_ + ") failed: " + std::strerror(errno));
    }
    reader_ = std::thread([this] { read_loop(); });
  }
  NotifyListener(const NotifyListener&) = delete;
  NotifyListener& operator=(const NotifyListener&) = delete;
  ~NotifyListener() {
    // A datagram of our own wakes the reader, which then ends.
    const int s = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    const auto [addr, len] = address();
    (void)::sendto(s, quit_, std::strlen(quit_), 0, reinterpret_cast<const sockaddr*>(&addr), len);
    ::close(s);
    reader_.join();
    ::close(fd_);
    if (where_.front() == '/') ::unlink(where_.c_str());
  }

  const std::string& where() const { return where_; }
  std::vector<std::string> messages() const {
    std::lock_guard lock(mu_);
    return messages_;
  }
  /// Waits until some message satisfies `pred`; returns its index.
  std::ptrdiff_t wait_for(const std::function<bool(const std::string&)>& pred, std::size_t from = 0) const {
    std::unique_lock lock(mu_);
    std::ptrdiff_t found = -1;
    cv_.wait_for(lock, hang_guard, [&] {
      for (std::size_t i = from; i < messages_.size(); ++i) {
        if (pred(messages_[i])) {
          found = static_cast<std::ptrdiff_t>(i);
          return true;
        }
      }
      return false;
    });
    return found;
  }
  /// Waits for a message containing `text`; returns its index or -1.
  std::ptrdiff_t wait_for_text(const std::string& text, std::size_t from = 0) const {
    return wait_for([&](const std::string& m) { return m.find(text) != std::string::npos; }, from);
  }

 private:
  std::pair<sockaddr_un, socklen_t> address() const {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, where_.data(), where_.size());
    const bool abstract = where_.front() == '@';
    if (abstract) a.sun_path[0] = '\0';
    return {a, static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + where_.size() + (abstract ? 0 : 1))};
  }
  void read_loop() {
    char buf[4096];
    for (;;) {
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        return;
      }
      std::string m(buf, static_cast<std::size_t>(n));
      if (m == quit_) return;
      std::lock_guard lock(mu_);
      messages_.push_back(std::move(m));
      cv_.notify_all();
    }
  }

  static constexpr const char* quit_ = "\x01quit";
  std::string where_;
  int fd_ = -1;
  std::thread reader_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<std::string> messages_;
};

}  // namespace pm::test
