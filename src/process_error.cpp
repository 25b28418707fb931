// ProcessError and the words for failures.
#include <processmanager/process_manager.hpp>

#include <boost/system/system_error.hpp>

#include <cctype>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace pm {

namespace {

std::string one_failure(const Failure& f) { return describe(f); }

std::string summary(const std::vector<Failure>& failures) {
  std::string what = "process '" + failures.front().process_name + "' " + one_failure(failures.front());
  if (failures.size() > 1) {
    what += " (and " + std::to_string(failures.size() - 1) + " more:";
    for (std::size_t i = 1; i < failures.size(); ++i) {
      what += (i == 1 ? " '" : ", '") + failures[i].process_name + "' " + one_failure(failures[i]);
    }
    what += ")";
  }
  return what;
}

// Boost.System puts where an error was raised inside the code's brackets:
// "bind: Address already in use [system:98 at /usr/include/boost/asio/
// detail/reactive_socket_service.hpp:161:5 in function 'boost::system::
// error_code boost::asio::detail::reactive_socket_service<Protocol>::bind(
// ...)']", 281 characters of which only the first 41 help an operator. The
// location is kept for debug logging, where someone is looking for it.

bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (const char c : s) {
    if (std::isdigit(static_cast<unsigned char>(c)) == 0) return false;
  }
  return true;
}

/// The end of a location "<file>:<line>[:<column>][ in function '<name>']"
/// that starts at `from` and is closed by ']', or npos when there is none.
std::size_t location_end(const std::string& text, std::size_t from) {
  const std::size_t close = text.find(']', from);
  if (close == std::string::npos) return std::string::npos;
  std::size_t end = close;
  const std::size_t fn = text.find(" in function '", from);
  if (fn != std::string::npos && fn < close) {
    // A function's name may hold brackets of its own ("[with T = int]").
    const std::size_t quote = text.find("']", fn);
    if (quote == std::string::npos) return std::string::npos;
    end = quote + 1;
  }
  std::string_view where(text.data() + from, (fn != std::string::npos && fn < close ? fn : close) - from);
  const auto drop_number = [&where] {
    const std::size_t colon = where.rfind(':');
    if (colon == std::string_view::npos || !all_digits(where.substr(colon + 1))) return false;
    where = where.substr(0, colon);
    return true;
  };
  // "<file>:<line>" or "<file>:<line>:<column>".
  if (!drop_number()) return std::string::npos;
  drop_number();
  return where.empty() ? std::string::npos : end;
}

/// `text` without the " at <location>" of each "[<category>:<value> at
/// <location>]" in it.
std::string without_locations(std::string text) {
  std::size_t open = text.find('[');
  while (open != std::string::npos) {
    const std::size_t at = text.find(" at ", open);
    const std::size_t close = text.find(']', open);
    if (at != std::string::npos && close != std::string::npos && at < close) {
      const std::string_view code(text.data() + open + 1, at - open - 1);
      const std::size_t colon = code.rfind(':');
      const std::string_view value = colon == std::string_view::npos ? code : code.substr(colon + 1);
      const bool is_code = colon != std::string_view::npos && colon > 0 &&
                           all_digits(value.size() > 1 && value[0] == '-' ? value.substr(1) : value);
      const std::size_t end = is_code ? location_end(text, at + 4) : std::string::npos;
      if (end != std::string::npos) text.erase(at, end - at);
    }
    open = text.find('[', open + 1);
  }
  return text;
}

std::string system_text(const boost::system::system_error& e) {
  std::string text = e.what();
  if (log_enabled(LogLevel::debug)) return text;
  const auto& code = e.code();
  if (code.has_location()) {
    const std::string at = " at " + code.location().to_string();
    const std::size_t i = text.rfind(at);
    if (i != std::string::npos) return text.erase(i, at.size());
  }
  return without_locations(std::move(text));
}

/// what() (which names no code) with the code: "<what> [generic:98]".
std::string system_text(const std::system_error& e) {
  std::string text = e.what();
  if (!log_enabled(LogLevel::debug)) text = without_locations(std::move(text));
  std::string code = "[";
  code += e.code().category().name();
  code += ':';
  code += std::to_string(e.code().value());
  // A Boost text passed on as what() may carry the code already.
  if (text.find(code + "]") == std::string::npos && text.find(code + " at ") == std::string::npos) {
    text += ' ';
    text += code;
    text += ']';
  }
  return text;
}

std::vector<Failure> first_of(std::string process_name, std::exception_ptr cause, std::vector<Failure> failures,
                              std::string reason) {
  if (failures.empty()) failures.push_back(Failure{std::move(process_name), std::move(cause), std::move(reason)});
  return failures;
}

}  // namespace

std::string describe(const std::exception_ptr& e) {
  if (!e) return "no exception";
  try {
    std::rethrow_exception(e);
  } catch (const boost::system::system_error& ex) {
    return system_text(ex);
  } catch (const std::system_error& ex) {
    return system_text(ex);
  } catch (const std::exception& ex) {
    return ex.what();
  } catch (...) {
    return "an exception not derived from std::exception";
  }
}

std::string describe(const Failure& f) {
  if (f.reason.empty()) return "failed: " + describe(f.cause);
  return f.reason + "; last failure: " + describe(f.cause);
}

ProcessError::ProcessError(std::string process_name, std::exception_ptr cause, std::vector<Failure> failures,
                           std::string reason, std::vector<std::string> not_stopped)
    : std::runtime_error(summary(first_of(process_name, cause, failures, reason))),
      failures_(first_of(std::move(process_name), std::move(cause), std::move(failures), std::move(reason))),
      not_stopped_(std::move(not_stopped)) {}

std::vector<Failure> ProcessError::collateral() const {
  std::vector<Failure> out;
  for (std::size_t i = 1; i < failures_.size(); ++i) {
    if (failures_[i].collateral) out.push_back(failures_[i]);
  }
  return out;
}

}  // namespace pm
