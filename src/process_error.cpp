// ProcessError and the words for failures.
#include <processmanager/process_manager.hpp>

#include <string>
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
