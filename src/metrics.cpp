#include <processmanager/metrics.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <stdexcept>

#include "metrics_text.hpp"
#include "utf8.hpp"

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
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (static_cast<unsigned char>(c) >= 0x80) {
      // The format is UTF-8: a byte that is not part of it would make a
      // parser refuse the whole document, so it becomes U+FFFD.
      const std::size_t n = detail::utf8_length(text, i);
      if (n == 0) {
        out += "\xEF\xBF\xBD";
      } else {
        out.append(text.substr(i, n));
        i += n - 1;
      }
    } else if (c == '\\') {
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

MetricsWriter::MetricsWriter(std::string& out, const std::vector<std::string>& written) : out_(&out) {
  for (const auto& name : written) declare(name, "");
  current_.clear();
}

void MetricsWriter::declare(std::string_view name, std::string_view type) {
  if (!valid_name(name, true)) {
    throw std::invalid_argument("MetricsWriter: '" + std::string(name) + "' is not a metric name");
  }
  static constexpr std::array<std::string_view, 5> types{"counter", "gauge", "histogram", "summary", "untyped"};
  if (!type.empty() && std::find(types.begin(), types.end(), type) == types.end()) {
    throw std::invalid_argument("MetricsWriter: family '" + std::string(name) + "' has no such type: '" +
                                std::string(type) + "'");
  }
  // The sample names the family may use; parsers read a sample by its name
  // (and a counter's family without `_total`), so no two families may
  // share one. An unknown type (a family written already) takes them all.
  std::vector<std::string> mine{std::string(name)};
  auto with = [&](std::string_view base, std::initializer_list<std::string_view> suffixes) {
    for (const auto suffix : suffixes) mine.push_back(std::string(base).append(suffix));
  };
  const bool any = type.empty();
  if (any || type == "counter") {
    with(name, {"_total", "_created"});
    constexpr std::string_view total = "_total";
    if (name.size() > total.size() && name.substr(name.size() - total.size()) == total) {
      const std::string_view base = name.substr(0, name.size() - total.size());
      mine.emplace_back(base);
      with(base, {"_created"});
    }
  }
  if (any || type == "histogram") with(name, {"_bucket", "_sum", "_count", "_created"});
  if (any || type == "summary") with(name, {"_sum", "_count", "_created"});
  for (const auto& n : mine) {
    if (std::find(names_.begin(), names_.end(), n) != names_.end()) {
      throw std::invalid_argument("MetricsWriter: family '" + std::string(name) +
                                  "' clashes with one written already (" + n + ")");
    }
  }
  families_.emplace_back(name);
  names_.insert(names_.end(), mine.begin(), mine.end());
  current_ = std::move(mine);
}

void MetricsWriter::family(std::string_view name, std::string_view type, std::string_view help) {
  if (type.empty()) throw std::invalid_argument("MetricsWriter: family '" + std::string(name) + "' needs a type");
  declare(name, type);
  std::string& out = *out_;
  out.append("# HELP ").append(name).append(" ");
  append_escaped(out, help, false);
  out.append("\n# TYPE ").append(name).append(" ").append(type).append("\n");
}

void MetricsWriter::sample(std::string_view name, const std::vector<MetricLabel>& labels, double value) {
  if (std::find(current_.begin(), current_.end(), name) == current_.end()) {
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
  // Checked whole on a copy of the books first: a refusal appends nothing.
  MetricsWriter check(*out_);
  check.families_ = families_;
  check.names_ = names_;
  std::vector<std::string> declared;  // sample names of the families the text declares
  for (std::size_t at = 0; at < text.size();) {
    const auto end = std::min(text.find('\n', at), text.size());
    std::string_view line = text.substr(at, end - at);
    at = end + 1;
    auto token = [&line] {
      const auto from = line.find_first_not_of(" \t\r");
      if (from == std::string_view::npos) return line = {}, std::string_view{};
      line.remove_prefix(from);
      const auto to = std::min(line.find_first_of(" \t\r{"), line.size());
      const std::string_view t = line.substr(0, to);
      line.remove_prefix(to);
      return t;
    };
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    if (line.front() == '#') {
      line.remove_prefix(1);
      if (token() != "TYPE") continue;  // HELP, or a comment
      const std::string_view name = token();
      check.declare(name, token());
      declared.insert(declared.end(), check.current_.begin(), check.current_.end());
      continue;
    }
    const std::string_view name = token();
    if (std::find(declared.begin(), declared.end(), name) == declared.end()) {
      throw std::invalid_argument("MetricsWriter: raw sample '" + std::string(name) +
                                  "' is of no family the text declares");
    }
  }
  families_ = std::move(check.families_);
  names_ = std::move(check.names_);
  current_.clear();  // samples go after their family's lines: the text's last family is closed
  out_->append(text);
  if (!text.empty() && text.back() != '\n') *out_ += '\n';
}

}  // namespace pm
