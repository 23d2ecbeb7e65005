#pragma once

/// Subject routing: matchers (exact, regex, glob) compiled once, a router that returns every
/// matching route in the order it was added (fan-out), and where a message's subject is read.
/// Thread-safety: a compiled `SubjectMatcher` and a built `Router` are immutable and may be used
/// from any number of threads at once.

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace metro::routing {

enum class MatchKind {
  kExact,  ///< The whole subject equals the pattern (case-sensitive).
  kRegex,  ///< RE2 syntax, matched against the whole subject, in linear time.
  kGlob,   ///< `*` and `?` stay within one `/`-separated segment, `**` spans segments.
};

/// Returns "exact", "regex" or "glob".
std::string_view to_string(MatchKind kind);

/// Translates a glob into an anchored RE2 pattern. `**/` also matches no segment at all, so
/// `a/**/b` matches `a/b`. Every other character is literal.
std::string glob_to_regex(std::string_view glob);

/// One compiled subject pattern.
class SubjectMatcher {
 public:
  /// Compiles `pattern`. Throws `metro::InvalidArgument` with RE2's explanation when a regex
  /// (or the regex a glob becomes) does not compile.
  SubjectMatcher(MatchKind kind, std::string_view pattern);

  bool matches(std::string_view subject) const;
  MatchKind kind() const { return kind_; }
  const std::string& pattern() const { return pattern_; }

 private:
  struct Compiled;
  MatchKind kind_;
  std::string pattern_;
  std::shared_ptr<const Compiled> compiled_;  // Null for exact matches.
};

/// An ordered list of matchers. `route` answers with the indices of all that match.
class Router {
 public:
  /// Adds a matcher; its index is the number of matchers added before it.
  std::size_t add(SubjectMatcher matcher);
  std::vector<std::size_t> route(std::string_view subject) const;
  std::size_t size() const { return matchers_.size(); }
  const SubjectMatcher& matcher(std::size_t index) const { return matchers_.at(index); }

 private:
  std::vector<SubjectMatcher> matchers_;
};

/// Where a message's subject is read.
enum class SubjectSource {
  kBody,              ///< The `"subject"` string of the JSON body (the original's convention).
  kProperty,          ///< The AMQP `subject` property (the SDKs' `subject` / `label`).
  kBodyThenProperty,  ///< The body's field when present, else the property.
};

std::string_view to_string(SubjectSource source);
/// Parses "body", "property" or "body-then-property".
std::optional<SubjectSource> subject_source_from_string(std::string_view text);

/// The outcome of looking for a message's subject.
struct SubjectLookup {
  enum class Status {
    kFound,          ///< `subject` holds it.
    kMissing,        ///< No subject where the source says to look; `problem` says why.
    kMalformedBody,  ///< The source needed the JSON body and it does not parse; `problem` says how.
  };
  Status status = Status::kMissing;
  std::string subject;
  std::string problem;
};

/// Reads the subject of a message whose body is `body` and whose AMQP subject property is
/// `property`, as `source` says.
SubjectLookup find_subject(SubjectSource source, std::string_view body,
                           const std::optional<std::string>& property);

}  // namespace metro::routing
