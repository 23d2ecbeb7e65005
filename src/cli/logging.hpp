#pragma once

// Logging set-up for the metro command: spdlog to stderr, as text or one JSON object a line.

#include <optional>
#include <string>
#include <string_view>

namespace metro::cli {

enum class LogFormat { kText, kJson };

/// Installs the default logger. Every line is passed through connection-string redaction, so a
/// key that reaches a log message by mistake is still not written.
/// Returns an error message when `level` is not a spdlog level name.
std::optional<std::string> setup_logging(std::string_view level, LogFormat format);

}  // namespace metro::cli
