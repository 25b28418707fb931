// MetricsWriter: metric families in the Prometheus text format, for
// HealthServer's /metrics (the library's own families and the user's).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace pm {

/// A label of a sample: a name ([a-zA-Z_][a-zA-Z0-9_]*) and any value (it
/// is escaped as the format requires).
struct MetricLabel {
  std::string_view name;   ///< "queue"
  std::string_view value;  ///< "orders"
};

/// Appends metric families to a document in the Prometheus text
/// exposition format, version 0.0.4: for each family its `# HELP` and
/// `# TYPE` lines, then its samples, all together (the format forbids a
/// family's lines to be split). Names, types and label names are checked
/// and label values escaped; what it refuses it refuses with
/// std::invalid_argument, before writing anything of that call.
class MetricsWriter {
 public:
  /// Appends to `out`, which must outlive the writer.
  explicit MetricsWriter(std::string& out) : out_(&out) {}
  /// The same, for a document that holds the families `written` already:
  /// they, and every sample name a family of theirs may use, are refused.
  MetricsWriter(std::string& out, const std::vector<std::string>& written);

  /// Begins a family: `name` matches [a-zA-Z_:][a-zA-Z0-9_:]*, `type` is
  /// one of counter, gauge, histogram, summary, untyped; `help` is any
  /// text (escaped). A family name already begun in this document is
  /// refused: two groups of one family are not valid.
  void family(std::string_view name, std::string_view type, std::string_view help);
  /// A sample of the family begun last. `name` is the family's name, or
  /// it followed by a suffix its type allows (counter: `_total`,
  /// `_created`; histogram: `_bucket`, `_sum`, `_count`, `_created`;
  /// summary: `_sum`, `_count`, `_created`); anything else is refused, as
  /// is a family whose sample names could be read as another family's.
  /// NaN and infinities are written as the format spells them; label
  /// values and help texts that are not UTF-8 get U+FFFD for each bad byte.
  void sample(std::string_view name, const std::vector<MetricLabel>& labels, double value);
  /// A sample without labels.
  void sample(std::string_view name, double value) { sample(name, {}, value); }

  /// Appends families written elsewhere (another metrics library's text
  /// serializer), as they are; a missing last line feed is added. Each
  /// `# TYPE` line in it (any whitespace) begins a family as family()
  /// does, and every sample in it must belong to a family it declares: a
  /// clash or a stray sample is refused, and nothing is appended.
  void raw(std::string_view text);

  /// The families begun so far, in order.
  const std::vector<std::string>& families() const noexcept { return families_; }

 private:
  /// Begins a family in the books (not in the text): what family() checks.
  void declare(std::string_view name, std::string_view type);

  std::string* out_;
  std::vector<std::string> families_;
  std::vector<std::string> names_;    // every sample name a family begun may use
  std::vector<std::string> current_;  // those of the family begun last
};

/// `value` escaped as a label value of the text format: backslash, double
/// quote and line feed as \\, \" and \n.
std::string escape_label_value(std::string_view value);

}  // namespace pm
