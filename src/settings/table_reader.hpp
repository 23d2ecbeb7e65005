#pragma once

// Reading one TOML table of a settings file: typed getters that record a diagnostic (file, line,
// key path, what was expected) instead of throwing, and `finish()` that reports the keys nobody
// asked for, with a suggestion when one is close. Shared by the metro config and the emulator's
// bus.toml, so both report mistakes the same way. Not thread-safe; one reader per table.

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <toml++/toml.h>

#include <metro/settings.hpp>

namespace metro::settings {

/// "a string", "an integer", … for "expected X, got Y".
std::string type_name(const toml::node& node);
int line_of(const toml::node& node);

/// Collects the diagnostics of one file. With an environment, string values are interpolated
/// (`${VAR}`); without one they are taken as written.
class Context {
 public:
  explicit Context(std::string file, const Environment* env = nullptr)
      : file_(std::move(file)), env_(env) {}

  void error(int line, std::string key, std::string message) {
    diagnostics_.push_back({file_, line, 0, std::move(key), std::move(message)});
  }
  const Environment* env() const { return env_; }
  const std::string& file() const { return file_; }
  std::vector<Diagnostic>& diagnostics() { return diagnostics_; }
  /// Throws `ConfigError` with every diagnostic, sorted by line, when there is any.
  void throw_if_any();

 private:
  std::string file_;
  const Environment* env_;
  std::vector<Diagnostic> diagnostics_;
};

/// Reads the keys of one table, checking types and remembering which keys it knows, so that
/// `finish()` can report the rest as unknown.
class TableReader {
 public:
  TableReader(Context& ctx, const toml::table& table, std::string path)
      : ctx_(ctx), table_(table), path_(std::move(path)) {}

  std::string key_path(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }
  /// This table's own key path (`topics[0]`); empty for the document.
  const std::string& path() const { return path_; }
  int line() const { return line_of(table_); }
  Context& context() { return ctx_; }

  /// The node under `key` (marking the key as known), or null.
  const toml::node* node(std::string_view key);
  int line_of_key(std::string_view key) const;

  void missing(std::string_view key, std::string_view expected);
  void wrong(std::string_view key, std::string_view expected);
  void invalid(std::string_view key, std::string message);

  /// A string value (interpolated when the context has an environment).
  std::optional<std::string> string(std::string_view key, bool required = false);
  std::optional<std::string> interpolated(std::string_view key, std::string_view text, int at);
  std::optional<bool> boolean(std::string_view key);
  std::optional<std::int64_t> integer(std::string_view key, std::int64_t min, std::int64_t max);
  /// A duration string (`"30s"`) or whole seconds.
  std::optional<std::chrono::milliseconds> duration(std::string_view key);
  /// A string that must be one of `choices`; returns its index.
  std::optional<std::size_t> choice(std::string_view key,
                                    std::initializer_list<std::string_view> choices);
  const toml::array* array(std::string_view key, std::string_view expected);
  const toml::table* table(std::string_view key);

  /// Calls `f(table, key_path)` for each table of the array of tables under `key`.
  template <typename F>
  void each_table(std::string_view key, F&& f) {
    const auto* a = array(key, "an array of tables");
    if (a == nullptr) return;
    for (std::size_t i = 0; i < a->size(); ++i) {
      auto path = key_path(key) + "[" + std::to_string(i) + "]";
      if (const auto* t = (*a)[i].as_table()) {
        f(*t, path);
      } else {
        ctx_.error(line_of((*a)[i]), path, "expected a table, got " + type_name((*a)[i]));
      }
    }
  }

  /// Reports every key of the table that nothing asked for.
  void finish();

 private:
  Context& ctx_;
  const toml::table& table_;
  std::string path_;
  std::set<std::string> known_;
};

/// Parses a whole TOML document; a syntax error becomes a `ConfigError` with its position.
toml::table parse_toml(std::string_view text, std::string_view file_name);

}  // namespace metro::settings
