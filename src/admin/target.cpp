#include "target.hpp"

namespace metro::admin {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/// Decodes `%XX` escapes (and `+` as a space in queries). Nullopt with `why` on a bad escape, on
/// text that is not UTF-8 once decoded, or on a control character.
std::optional<std::string> decode(std::string_view text, bool plus_is_space, std::string& why) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '%') {
      int hi = i + 1 < text.size() ? hex_value(text[i + 1]) : -1;
      int lo = i + 2 < text.size() ? hex_value(text[i + 2]) : -1;
      if (hi < 0 || lo < 0) {
        why = "a '%' in the request target is not followed by two hex digits";
        return std::nullopt;
      }
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out += ' ';
    } else {
      out += c;
    }
  }
  if (!is_utf8(out)) {
    why = "the request target decodes to text that is not UTF-8";
    return std::nullopt;
  }
  for (unsigned char b : out) {
    if (b < 0x20 || b == 0x7f) {
      why = "the request target decodes to a control character";
      return std::nullopt;
    }
  }
  return out;
}

}  // namespace

bool is_utf8(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    auto b = static_cast<unsigned char>(text[i]);
    if (b < 0x80) {
      ++i;
      continue;
    }
    std::size_t n = 0;
    std::uint32_t cp = 0;
    if ((b & 0xE0) == 0xC0) {
      n = 1;
      cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      n = 2;
      cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      n = 3;
      cp = b & 0x07;
    } else {
      return false;
    }
    if (n >= text.size() - i) return false;  // The sequence runs past the end.
    for (std::size_t k = 1; k <= n; ++k) {
      auto c = static_cast<unsigned char>(text[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    static constexpr std::uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto x = static_cast<unsigned char>(a[i]);
    auto y = static_cast<unsigned char>(b[i]);
    if (x >= 'A' && x <= 'Z') x = static_cast<unsigned char>(x + 32);
    if (y >= 'A' && y <= 'Z') y = static_cast<unsigned char>(y + 32);
    if (x != y) return false;
  }
  return true;
}

std::optional<std::vector<std::string>> parse_path(std::string_view path, std::string& why) {
  if (path.empty() || path.front() != '/') {
    why = "the request target must be a path starting with '/'";
    return std::nullopt;
  }
  std::vector<std::string> segments;
  std::size_t start = 1;  // After the leading '/'.
  while (start <= path.size()) {
    auto end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    auto segment = decode(path.substr(start, end - start), false, why);
    if (!segment) return std::nullopt;
    segments.push_back(std::move(*segment));
    start = end + 1;
  }
  return segments;
}

std::optional<std::multimap<std::string, std::string>> parse_query(std::string_view query,
                                                                   std::string& why) {
  std::multimap<std::string, std::string> params;
  std::size_t begin = 0;
  while (begin < query.size()) {
    auto end = query.find('&', begin);
    if (end == std::string_view::npos) end = query.size();
    auto pair = query.substr(begin, end - begin);
    if (!pair.empty()) {
      auto eq = pair.find('=');
      auto name = decode(pair.substr(0, eq), true, why);
      if (!name) return std::nullopt;
      auto value = decode(eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1),
                          true, why);
      if (!value) return std::nullopt;
      params.emplace(std::move(*name), std::move(*value));
    }
    begin = end + 1;
  }
  return params;
}

}  // namespace metro::admin
