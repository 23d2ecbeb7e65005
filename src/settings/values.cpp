// The small value parsers every settings file uses: interpolation, durations, the environment,
// and the diagnostics a bad file produces.

#include <cctype>
#include <charconv>
#include <cstdlib>

#include <metro/settings.hpp>

namespace metro {
namespace {

bool is_name_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool is_name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

std::string join_messages(const std::vector<Diagnostic>& diagnostics) {
  std::string out;
  for (const auto& d : diagnostics) {
    if (!out.empty()) out += '\n';
    out += d.to_string();
  }
  return out;
}

}  // namespace

std::string Diagnostic::to_string() const {
  std::string out = file;
  if (line > 0) out += ":" + std::to_string(line);
  if (column > 0) out += ":" + std::to_string(column);
  out += ": ";
  if (!key.empty()) out += key + ": ";
  return out + message;
}

ConfigError::ConfigError(std::vector<Diagnostic> diagnostics)
    : Error(join_messages(diagnostics)), diagnostics_(std::move(diagnostics)) {}

Environment process_environment() {
  return [](std::string_view name) -> std::optional<std::string> {
    const char* value = std::getenv(std::string(name).c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
}

std::string interpolate(std::string_view text, const Environment& env) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c != '$' || i + 1 == text.size()) {
      out += c;
      continue;
    }
    if (text[i + 1] == '$') {
      out += '$';
      ++i;
      continue;
    }
    if (text[i + 1] != '{') {
      out += c;
      continue;
    }
    auto close = text.find('}', i + 2);
    if (close == std::string_view::npos) {
      throw InvalidArgument("'${' without a closing '}' (write $${ for a literal ${)");
    }
    auto inner = text.substr(i + 2, close - i - 2);
    auto name_end = std::size_t{0};
    while (name_end < inner.size() && is_name_char(inner[name_end])) ++name_end;
    auto name = inner.substr(0, name_end);
    if (name.empty() || !is_name_start(name.front())) {
      throw InvalidArgument("'${" + std::string(inner) +
                            "}' is not a variable reference (expected ${NAME} or "
                            "${NAME:-default})");
    }
    auto rest = inner.substr(name_end);
    std::optional<std::string_view> fallback;
    if (rest.substr(0, 2) == ":-") {
      fallback = rest.substr(2);
    } else if (!rest.empty()) {
      throw InvalidArgument("'${" + std::string(inner) +
                            "}' is not a variable reference (expected ${NAME} or "
                            "${NAME:-default})");
    }
    auto value = env(name);
    if (value && (!value->empty() || !fallback)) {
      out += *value;
    } else if (fallback) {
      out += *fallback;
    } else {
      throw InvalidArgument("environment variable " + std::string(name) +
                            " is not set (set it, or write ${" + std::string(name) +
                            ":-default} to give a default)");
    }
    i = close;
  }
  return out;
}

std::optional<std::chrono::milliseconds> parse_duration(std::string_view text) {
  if (text.empty()) return std::nullopt;
  std::chrono::milliseconds total{0};
  while (!text.empty()) {
    long long amount = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), amount);
    if (ec != std::errc{} || amount < 0) return std::nullopt;
    text.remove_prefix(static_cast<std::size_t>(ptr - text.data()));
    std::size_t unit_length = 0;
    while (unit_length < text.size() &&
           std::isalpha(static_cast<unsigned char>(text[unit_length]))) {
      ++unit_length;
    }
    auto unit = text.substr(0, unit_length);
    text.remove_prefix(unit_length);
    long long unit_ms = 0;
    if (unit == "ms") {
      unit_ms = 1;
    } else if (unit == "s") {
      unit_ms = 1000;
    } else if (unit == "m") {
      unit_ms = 60LL * 1000;
    } else if (unit == "h") {
      unit_ms = 3600LL * 1000;
    } else if (unit == "d") {
      unit_ms = 24LL * 3600 * 1000;
    } else {
      return std::nullopt;
    }
    // Beyond a century is a typo, and would overflow further on.
    constexpr long long kMaxMs = 100LL * 366 * 24 * 3600 * 1000;
    if (amount > kMaxMs / unit_ms || total.count() + amount * unit_ms > kMaxMs) return std::nullopt;
    total += std::chrono::milliseconds(amount * unit_ms);
  }
  return total;
}

}  // namespace metro
