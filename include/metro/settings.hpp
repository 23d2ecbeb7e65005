#pragma once

/// What metro's settings files share (`metro.toml`, the emulator's `bus.toml`): the diagnostics a
/// bad file produces, the error that carries them, `${VAR}` interpolation and durations.
/// Thread-safety: plain values and reentrant functions.

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <metro/error.hpp>

namespace metro {

/// One problem in a settings file.
struct Diagnostic {
  std::string file;
  int line = 0;     ///< 1-based; 0 when unknown.
  int column = 0;   ///< 1-based; 0 when not given.
  std::string key;  ///< e.g. `subscriptions[0].handlers[1].subject`; empty for the whole file.
  std::string message;

  /// `file:line: key: message` (the form compilers use, so editors can jump to it).
  std::string to_string() const;
};

/// Thrown when a settings file cannot be used; carries every problem found, not just the first.
class ConfigError : public Error {
 public:
  explicit ConfigError(std::vector<Diagnostic> diagnostics);
  const std::vector<Diagnostic>& diagnostics() const { return diagnostics_; }

 private:
  std::vector<Diagnostic> diagnostics_;
};

/// Looks up an environment variable; nullopt when it is not set.
using Environment = std::function<std::optional<std::string>(std::string_view)>;
/// The process environment.
Environment process_environment();

/// Replaces `${NAME}` and `${NAME:-default}` with values from `env`; `$$` stands for `$`.
/// Throws `metro::InvalidArgument` naming an unset variable that has no default, or bad syntax.
std::string interpolate(std::string_view text, const Environment& env);

/// Parses a duration: a string of number+unit parts, units `ms`, `s`, `m`, `h`, `d`
/// (`"250ms"`, `"30s"`, `"1h30m"`). Nullopt when it is not one (or beyond a century).
std::optional<std::chrono::milliseconds> parse_duration(std::string_view text);

}  // namespace metro
