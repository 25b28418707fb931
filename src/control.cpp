#include <processmanager/control.hpp>
#include <processmanager/operation.hpp>

#include <string>

namespace pm {

std::string_view to_string(ControlKind kind) noexcept {
  switch (kind) {
    case ControlKind::shutdown:
      return "shutdown";
    case ControlKind::reload:
      return "reload";
    case ControlKind::custom:
      return "custom";
  }
  return "unknown";
}

namespace detail {

void throw_not_next(const std::string& service, ControlKind kind) {
  std::string what = "ProcessOperation::next()";
  if (!service.empty()) what += " in service '" + service + "'";
  what += ": the tick returned a control message (";
  what += to_string(kind);
  what += "), not work; check is_next() first";
  throw std::logic_error(what);
}

void throw_empty_operation() {
  throw std::logic_error(
      "ProcessOperation: the operation is empty (default-constructed); it holds neither work nor control");
}

void throw_not_control() {
  throw std::logic_error(
      "ProcessOperation::control(): the tick returned the work's result, not a control message; "
      "check is_control() first");
}

}  // namespace detail
}  // namespace pm
