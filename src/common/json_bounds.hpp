#pragma once

// Bounds for JSON that comes from outside (message bodies, HTTP requests, task results): checked
// before anything parses, copies or renders it. nlohmann's parser and destructor do not recurse,
// but copying and dumping a value do, so a body nested 100,000 deep must be refused before it
// becomes a value at all. The scan is linear, allocates nothing and never recurses.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace metro::json_bounds {

/// Deepest nesting of arrays and objects accepted anywhere metro reads JSON.
inline constexpr std::size_t kMaxDepth = 128;

/// Why `text` exceeds `max_depth` levels of nesting or `max_size` bytes, or nullopt when it is
/// within both. Brackets inside strings do not count; the text need not be valid JSON (the parser
/// says what else is wrong).
inline std::optional<std::string> check(std::string_view text, std::size_t max_depth = kMaxDepth,
                                        std::size_t max_size = std::string_view::npos) {
  if (text.size() > max_size) {
    return "it is " + std::to_string(text.size()) + " bytes, over the limit of " +
           std::to_string(max_size);
  }
  std::size_t depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // The escaped character cannot end the string.
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '[':
      case '{':
        if (++depth > max_depth) {
          return "it is nested more than " + std::to_string(max_depth) +
                 " levels deep (at byte " + std::to_string(i) + ")";
        }
        break;
      case ']':
      case '}':
        if (depth > 0) --depth;
        break;
      default:
        break;
    }
  }
  return std::nullopt;
}

}  // namespace metro::json_bounds
