#include "table_reader.hpp"

#include <algorithm>
#include <cctype>

namespace metro::settings {
namespace {

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

}  // namespace

std::string type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::date:
    case toml::node_type::time:
    case toml::node_type::date_time:
      return "a date/time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

int line_of(const toml::node& node) { return static_cast<int>(node.source().begin.line); }

void Context::throw_if_any() {
  if (diagnostics_.empty()) return;
  std::stable_sort(diagnostics_.begin(), diagnostics_.end(),
                   [](const Diagnostic& a, const Diagnostic& b) { return a.line < b.line; });
  throw ConfigError(std::move(diagnostics_));
}

const toml::node* TableReader::node(std::string_view key) {
  known_.insert(std::string(key));
  return table_.get(key);
}

int TableReader::line_of_key(std::string_view key) const {
  const auto* n = table_.get(key);
  return n != nullptr ? line_of(*n) : line();
}

void TableReader::missing(std::string_view key, std::string_view expected) {
  ctx_.error(line(), key_path(key), "missing (expected " + std::string(expected) + ")");
}

void TableReader::wrong(std::string_view key, std::string_view expected) {
  const auto* n = table_.get(key);
  ctx_.error(line_of_key(key), key_path(key),
             "expected " + std::string(expected) + ", got " + (n ? type_name(*n) : "nothing"));
}

void TableReader::invalid(std::string_view key, std::string message) {
  ctx_.error(line_of_key(key), key_path(key), std::move(message));
}

std::optional<std::string> TableReader::string(std::string_view key, bool required) {
  const auto* n = node(key);
  if (n == nullptr) {
    if (required) missing(key, "a string");
    return std::nullopt;
  }
  const auto* s = n->as_string();
  if (s == nullptr) {
    wrong(key, "a string");
    return std::nullopt;
  }
  return interpolated(key, s->get(), line_of(*n));
}

std::optional<std::string> TableReader::interpolated(std::string_view key, std::string_view text,
                                                     int at) {
  if (ctx_.env() == nullptr) return std::string(text);
  try {
    return interpolate(text, *ctx_.env());
  } catch (const InvalidArgument& e) {
    ctx_.error(at, key_path(key), e.what());
    return std::nullopt;
  }
}

std::optional<bool> TableReader::boolean(std::string_view key) {
  const auto* n = node(key);
  if (n == nullptr) return std::nullopt;
  if (const auto* b = n->as_boolean()) return b->get();
  wrong(key, "true or false");
  return std::nullopt;
}

std::optional<std::int64_t> TableReader::integer(std::string_view key, std::int64_t min,
                                                 std::int64_t max) {
  const auto* n = node(key);
  if (n == nullptr) return std::nullopt;
  const auto* i = n->as_integer();
  std::string expected = "an integer from " + std::to_string(min) + " to " + std::to_string(max);
  if (i == nullptr) {
    wrong(key, expected);
    return std::nullopt;
  }
  if (i->get() < min || i->get() > max) {
    invalid(key, "expected " + expected + ", got " + std::to_string(i->get()));
    return std::nullopt;
  }
  return i->get();
}

std::optional<std::chrono::milliseconds> TableReader::duration(std::string_view key) {
  const auto* n = node(key);
  if (n == nullptr) return std::nullopt;
  constexpr std::string_view kExpected =
      "a duration such as \"250ms\", \"30s\", \"5m\", \"1h30m\", or whole seconds";
  if (const auto* i = n->as_integer()) {
    if (i->get() >= 0) return std::chrono::seconds(i->get());
    invalid(key, "expected " + std::string(kExpected) + ", got " + std::to_string(i->get()));
    return std::nullopt;
  }
  const auto* s = n->as_string();
  if (s == nullptr) {
    wrong(key, kExpected);
    return std::nullopt;
  }
  auto text = interpolated(key, s->get(), line_of(*n));
  if (!text) return std::nullopt;
  if (auto d = parse_duration(*text)) return d;
  invalid(key, "expected " + std::string(kExpected) + ", got \"" + *text + "\"");
  return std::nullopt;
}

std::optional<std::size_t> TableReader::choice(std::string_view key,
                                               std::initializer_list<std::string_view> choices) {
  std::string expected = "one of ";
  std::size_t position = 0;
  for (auto c : choices) {
    if (position > 0) expected += position + 1 == choices.size() ? " or " : ", ";
    expected.append("\"").append(c).append("\"");  // Not `"…" + string`: GCC 12 -Wrestrict.
    ++position;
  }
  const auto* n = node(key);
  if (n == nullptr) return std::nullopt;
  const auto* s = n->as_string();
  if (s == nullptr) {
    wrong(key, expected);
    return std::nullopt;
  }
  auto text = interpolated(key, s->get(), line_of(*n));
  if (!text) return std::nullopt;
  std::size_t index = 0;
  for (auto c : choices) {
    if (*text == c) return index;
    ++index;
  }
  invalid(key, "expected " + expected + ", got \"" + *text + "\"");
  return std::nullopt;
}

const toml::array* TableReader::array(std::string_view key, std::string_view expected) {
  const auto* n = node(key);
  if (n == nullptr) return nullptr;
  if (const auto* a = n->as_array()) return a;
  wrong(key, expected);
  return nullptr;
}

const toml::table* TableReader::table(std::string_view key) {
  const auto* n = node(key);
  if (n == nullptr) return nullptr;
  if (const auto* t = n->as_table()) return t;
  wrong(key, "a table");
  return nullptr;
}

void TableReader::finish() {
  for (const auto& [key, value] : table_) {
    std::string name(key.str());
    if (known_.count(name) != 0) continue;
    std::string message = "unknown key";
    std::string best;
    std::size_t best_distance = 3;
    for (const auto& k : known_) {
      auto d = edit_distance(lower(name), lower(k));
      if (d < best_distance) {
        best_distance = d;
        best = k;
      }
    }
    if (!best.empty()) {
      message += "; did you mean '" + best + "'?";
    } else {
      message += " (expected one of:";
      for (const auto& k : known_) message += " " + k;
      message += ")";
    }
    ctx_.error(line_of(value), key_path(name), message);
  }
}

toml::table parse_toml(std::string_view text, std::string_view file_name) {
  try {
    return toml::parse(text, file_name);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    throw ConfigError(
        {{std::string(file_name), static_cast<int>(where.line), static_cast<int>(where.column), "",
          "TOML syntax error: " + std::string(e.description())}});
  }
}

}  // namespace metro::settings
