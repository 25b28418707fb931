// Control messages: what a supervisor tells a running service.
#pragma once

#include <memory>
#include <string_view>
#include <typeinfo>
#include <utility>

#include <boost/asio.hpp>

namespace pm {

/// `pm::asio` is Boost.Asio: every async API of the library speaks it.
namespace asio = boost::asio;

/// What a control message asks for.
enum class ControlKind { shutdown, reload, custom };

/// A readable name for a kind ("shutdown", "reload", "custom").
std::string_view to_string(ControlKind kind) noexcept;

/// A control message: shutdown, reload, or a custom payload of any copyable
/// type. A value type; copies share a custom payload, which is immutable.
class RuntimeControlMessage {
 public:
  /// A shutdown message: the value a default slot holds (co_spawn and
  /// use_future need one); an unknown message errs on the side of stopping.
  RuntimeControlMessage() noexcept : kind_(ControlKind::shutdown) {}
  /// Ask the service to stop gracefully.
  static RuntimeControlMessage shutdown() noexcept { return RuntimeControlMessage(ControlKind::shutdown); }
  /// Ask the service to reload its configuration.
  static RuntimeControlMessage reload() noexcept { return RuntimeControlMessage(ControlKind::reload); }
  /// A message carrying `payload`; read it back with `custom_if<T>()`.
  template <class T>
  static RuntimeControlMessage custom(T payload) {
    RuntimeControlMessage m(ControlKind::custom);
    m.payload_ = std::make_shared<const T>(std::move(payload));
    m.type_ = &typeid(T);
    return m;
  }

  /// The kind of the message.
  ControlKind kind() const noexcept { return kind_; }
  /// True for shutdown().
  bool is_shutdown() const noexcept { return kind_ == ControlKind::shutdown; }
  /// True for reload().
  bool is_reload() const noexcept { return kind_ == ControlKind::reload; }
  /// True for custom().
  bool is_custom() const noexcept { return kind_ == ControlKind::custom; }

  /// The payload if this is a custom message holding exactly a `T`, else nullptr.
  template <class T>
  const T* custom_if() const noexcept {
    if (kind_ != ControlKind::custom || type_ == nullptr || *type_ != typeid(T)) return nullptr;
    return static_cast<const T*>(payload_.get());
  }

 private:
  explicit RuntimeControlMessage(ControlKind k) noexcept : kind_(k) {}

  ControlKind kind_;
  // Type-erased so that every service speaks one message type; shared so
  // that a broadcast to N services copies a pointer, not the payload.
  std::shared_ptr<const void> payload_;
  const std::type_info* type_ = nullptr;
};

}  // namespace pm
