// ProcessOperation<T>: what one RuntimeTicker::tick produced.
#pragma once

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include <processmanager/control.hpp>

namespace pm {

namespace detail {
[[noreturn]] void throw_not_next(const std::string& service, ControlKind kind);
[[noreturn]] void throw_empty_operation();
[[noreturn]] void throw_not_control();

/// The control side of an operation. Kept behind one pointer so that the
/// work side, the hot path of every tick, moves a null pointer and nothing
/// else.
struct ControlOutcome {
  RuntimeControlMessage message;
  std::string service;
};
}  // namespace detail

/// The outcome of one tick: either the work's result (`is_next()`) or the
/// control message that won the race (`is_control()`). `T` may be void.
template <class T>
class ProcessOperation {
 public:
  /// An empty operation, neither next nor control (a default slot for
  /// co_spawn and use_future); both accessors throw std::logic_error.
  ProcessOperation() = default;
  /// Work finished first; `value` is what `co_await op` would have produced.
  static ProcessOperation from_next(T value) {
    ProcessOperation op;
    op.next_.emplace(std::move(value));
    return op;
  }
  /// A control message came first; `service` names the receiver in errors.
  static ProcessOperation from_control(RuntimeControlMessage msg, std::string service = {}) {
    ProcessOperation op;
    op.control_ = std::make_unique<detail::ControlOutcome>(detail::ControlOutcome{std::move(msg), std::move(service)});
    return op;
  }

  /// True when the work completed first.
  bool is_next() const noexcept { return next_.has_value(); }
  /// True when a control message came first.
  bool is_control() const noexcept { return control_ != nullptr; }

  /// The work's result. Throws std::logic_error on a control operation.
  T& next() {
    if (!next_) not_next();
    return *next_;
  }
  /// The work's result. Throws std::logic_error on a control operation.
  const T& next() const {
    if (!next_) not_next();
    return *next_;
  }
  /// The control message. Throws std::logic_error on a work operation.
  const RuntimeControlMessage& control() const {
    if (!control_) detail::throw_not_control();
    return control_->message;
  }

 private:
  [[noreturn]] void not_next() const {
    if (!control_) detail::throw_empty_operation();
    detail::throw_not_next(control_->service, control_->message.kind());
  }
  std::optional<T> next_;
  std::unique_ptr<detail::ControlOutcome> control_;
};

/// The void form: work produced no value, so there is no next().
template <>
class ProcessOperation<void> {
 public:
  /// Work finished (the default: a void operation without a message).
  ProcessOperation() = default;
  /// Work finished first.
  static ProcessOperation from_next() noexcept { return ProcessOperation(); }
  /// A control message came first; `service` names the receiver in errors.
  static ProcessOperation from_control(RuntimeControlMessage msg, std::string service = {}) {
    ProcessOperation op;
    op.control_ = std::make_unique<detail::ControlOutcome>(detail::ControlOutcome{std::move(msg), std::move(service)});
    return op;
  }
  /// True when the work completed first.
  bool is_next() const noexcept { return control_ == nullptr; }
  /// True when a control message came first.
  bool is_control() const noexcept { return control_ != nullptr; }
  /// The control message. Throws std::logic_error on a work operation.
  const RuntimeControlMessage& control() const {
    if (!control_) detail::throw_not_control();
    return control_->message;
  }

 private:
  std::unique_ptr<detail::ControlOutcome> control_;
};

}  // namespace pm
