#include <processmanager/metrics.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <stdexcept>

#include "metrics_text.hpp"

namespace pm {

namespace {

bool name_char(char c, bool first, bool colon) {
  const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
  return letter || (!first && c >= '0' && c <= '9');
}

bool valid_name(std::string_view name, bool colon) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    if (!name_char(name[i], i == 0, colon)) return false;
  }
  return true;
}

void append_escaped(std::string& out, std::string_view text, bool quote) {
  for (const char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

}  // namespace

void detail::append_metric_value(std::string& out, double value) {
  if (std::isnan(value)) {
    out += "NaN";
  } else if (std::isinf(value)) {
    out += value > 0 ? "+Inf" : "-Inf";
  } else {
    std::array<char, 32> buf{};
    // The shortest text that reads back as the same double; integers
    // (counts) come out without a fraction or an exponent.
    const auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), value);
    (void)ec;  // 32 characters hold any double
    out.append(buf.data(), end);
  }
}

std::string escape_label_value(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  append_escaped(out, value, true);
  return out;
}

void MetricsWriter::family(std::string_view name, std::string_view type, std::string_view help) {
  if (!valid_name(name, true)) {
    throw std::invalid_argument("MetricsWriter: '" + std::string(name) + "' is not a metric name");
  }
  static constexpr std::array<std::string_view, 5> types{"counter", "gauge", "histogram", "summary", "untyped"};
  if (std::find(types.begin(), types.end(), type) == types.end()) {
    throw std::invalid_argument("MetricsWriter: family '" + std::string(name) + "' has no such type: '" +
                                std::string(type) + "'");
  }
  if (std::find(families_.begin(), families_.end(), name) != families_.end()) {
    throw std::invalid_argument("MetricsWriter: family '" + std::string(name) + "' was written already");
  }
  families_.emplace_back(name);
  std::string& out = *out_;
  out.append("# HELP ").append(name).append(" ");
  append_escaped(out, help, false);
  out.append("\n# TYPE ").append(name).append(" ").append(type).append("\n");
}

void MetricsWriter::sample(std::string_view name, const std::vector<MetricLabel>& labels, double value) {
  const bool of_family = !families_.empty() && name.substr(0, families_.back().size()) == families_.back() &&
                         (name.size() == families_.back().size() || name[families_.back().size()] == '_');
  if (!of_family || !valid_name(name, true)) {
    throw std::invalid_argument("MetricsWriter: sample '" + std::string(name) + "' is not of the family begun last (" +
                                (families_.empty() ? std::string("none") : families_.back()) + ")");
  }
  for (std::size_t i = 0; i < labels.size(); ++i) {
    const auto& l = labels[i];
    if (!valid_name(l.name, false) || l.name.substr(0, 2) == "__") {
      throw std::invalid_argument("MetricsWriter: sample '" + std::string(name) + "': '" + std::string(l.name) +
                                  "' is not a label name");
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (labels[j].name == l.name) {
        throw std::invalid_argument("MetricsWriter: sample '" + std::string(name) + "' has label '" +
                                    std::string(l.name) + "' twice");
      }
    }
  }
  std::string& out = *out_;
  out.append(name);
  if (!labels.empty()) {
    out += '{';
    for (std::size_t i = 0; i < labels.size(); ++i) {
      if (i > 0) out += ',';
      out.append(labels[i].name).append("=\"");
      append_escaped(out, labels[i].value, true);
      out += '"';
    }
    out += '}';
  }
  out += ' ';
  detail::append_metric_value(out, value);
  out += '\n';
}

void MetricsWriter::raw(std::string_view text) {
  std::vector<std::string> found;
  for (std::size_t at = 0; at < text.size();) {
    const auto end = std::min(text.find('\n', at), text.size());
    const std::string_view line = text.substr(at, end - at);
    at = end + 1;
    if (line.substr(0, 7) != "# TYPE ") continue;
    const std::string_view rest = line.substr(7);
    const std::string name(rest.substr(0, rest.find(' ')));
    if (std::find(families_.begin(), families_.end(), name) != families_.end() ||
        std::find(found.begin(), found.end(), name) != found.end()) {
      throw std::invalid_argument("MetricsWriter: family '" + name + "' was written already");
    }
    found.push_back(name);
  }
  families_.insert(families_.end(), found.begin(), found.end());
  out_->append(text);
  if (!text.empty() && text.back() != '\n') *out_ += '\n';
}

}  // namespace pm
