#include <nlohmann/json.hpp>
#include <re2/re2.h>

#include <metro/error.hpp>
#include <metro/routing/router.hpp>

#include "../common/json_bounds.hpp"

namespace metro::routing {

struct SubjectMatcher::Compiled {
  explicit Compiled(const std::string& regex) : re(regex, RE2::Quiet) {}
  RE2 re;
};

std::string_view to_string(MatchKind kind) {
  switch (kind) {
    case MatchKind::kExact:
      return "exact";
    case MatchKind::kRegex:
      return "regex";
    case MatchKind::kGlob:
      return "glob";
  }
  return "exact";
}

std::string glob_to_regex(std::string_view glob) {
  std::string out;
  std::size_t i = 0;
  auto literal_start = i;
  auto flush_literal = [&](std::size_t end) {
    if (end > literal_start) {
      out += RE2::QuoteMeta(re2::StringPiece(glob.data() + literal_start, end - literal_start));
    }
  };
  while (i < glob.size()) {
    char c = glob[i];
    if (c == '*' && i + 1 < glob.size() && glob[i + 1] == '*') {
      flush_literal(i);
      bool segment_start = i == 0 || glob[i - 1] == '/';
      bool slash_after = i + 2 < glob.size() && glob[i + 2] == '/';
      if (segment_start && slash_after) {
        out += "(?:.*/)?";  // `**/`: any number of whole segments, including none.
        i += 3;
      } else {
        out += ".*";
        i += 2;
      }
      literal_start = i;
    } else if (c == '*') {
      flush_literal(i);
      out += "[^/]*";
      literal_start = ++i;
    } else if (c == '?') {
      flush_literal(i);
      out += "[^/]";
      literal_start = ++i;
    } else {
      ++i;
    }
  }
  flush_literal(i);
  return out;
}

SubjectMatcher::SubjectMatcher(MatchKind kind, std::string_view pattern)
    : kind_(kind), pattern_(pattern) {
  if (kind == MatchKind::kExact) return;
  std::string regex = kind == MatchKind::kGlob ? glob_to_regex(pattern) : std::string(pattern);
  auto compiled = std::make_shared<Compiled>(regex);
  if (!compiled->re.ok()) {
    throw InvalidArgument("invalid " + std::string(to_string(kind)) + " '" + pattern_ +
                          "': " + compiled->re.error());
  }
  compiled_ = std::move(compiled);
}

bool SubjectMatcher::matches(std::string_view subject) const {
  if (kind_ == MatchKind::kExact) return subject == pattern_;
  return RE2::FullMatch(re2::StringPiece(subject.data(), subject.size()), compiled_->re);
}

std::size_t Router::add(SubjectMatcher matcher) {
  matchers_.push_back(std::move(matcher));
  return matchers_.size() - 1;
}

std::vector<std::size_t> Router::route(std::string_view subject) const {
  std::vector<std::size_t> hits;
  for (std::size_t i = 0; i < matchers_.size(); ++i) {
    if (matchers_[i].matches(subject)) hits.push_back(i);
  }
  return hits;
}

std::string_view to_string(SubjectSource source) {
  switch (source) {
    case SubjectSource::kBody:
      return "body";
    case SubjectSource::kProperty:
      return "property";
    case SubjectSource::kBodyThenProperty:
      return "body-then-property";
  }
  return "body";
}

std::optional<SubjectSource> subject_source_from_string(std::string_view text) {
  if (text == "body") return SubjectSource::kBody;
  if (text == "property") return SubjectSource::kProperty;
  if (text == "body-then-property") return SubjectSource::kBodyThenProperty;
  return std::nullopt;
}

namespace {

SubjectLookup from_property(const std::optional<std::string>& property, std::string problem) {
  if (property && !property->empty()) return {SubjectLookup::Status::kFound, *property, {}};
  return {SubjectLookup::Status::kMissing, {}, std::move(problem)};
}

}  // namespace

SubjectLookup find_subject(SubjectSource source, std::string_view body,
                           const std::optional<std::string>& property) {
  if (source == SubjectSource::kProperty) {
    return from_property(property, "the message has no subject property");
  }
  // Bounded before it is parsed (a body from outside may be nested without end).
  if (auto problem = json_bounds::check(body)) {
    return {SubjectLookup::Status::kMalformedBody, {}, "the body is not acceptable JSON: " + *problem};
  }
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(body);
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for 1e999
    // nlohmann says where parsing stopped: that is what a person needs to find the problem.
    return {SubjectLookup::Status::kMalformedBody,
            {},
            std::string("the body is not JSON: ") + e.what()};
  }
  std::string problem;
  if (!json.is_object()) {
    problem = "the JSON body is not an object";
  } else if (auto it = json.find("subject"); it == json.end()) {
    problem = "the JSON body has no \"subject\" field";
  } else if (!it->is_string()) {
    problem = std::string("the JSON body's \"subject\" is a ") + it->type_name() + ", not a string";
  } else {
    return {SubjectLookup::Status::kFound, it->get<std::string>(), {}};
  }
  if (source == SubjectSource::kBodyThenProperty) {
    return from_property(property, problem + ", and the message has no subject property");
  }
  return {SubjectLookup::Status::kMissing, {}, problem};
}

}  // namespace metro::routing
