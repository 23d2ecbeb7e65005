// The error normaliser and the failure group id (see failure_groups.hpp). One linear pass over a
// bounded input: white space, quoted values and words; each word is classified (URL, path) or cut
// into runs of letters and digits, each run replaced when it is a number, hex or an id.

#include "failure_groups.hpp"

#include <cstdint>

namespace metro::ledger {
namespace {

bool is_alnum(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
bool is_hex(unsigned char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
bool is_space(unsigned char c) { return c <= 0x20 || c == 0x7f; }
bool is_quote(unsigned char c) { return c == '\'' || c == '"' || c == '`'; }
/// Characters that stay inside one word: `order-123`, `id=7`, `/var/x.db`, `a@b`.
bool is_word(unsigned char c) {
  if (is_alnum(c)) return true;
  switch (c) {
    case '_':
    case '-':
    case '.':
    case ':':
    case '/':
    case '\\':
    case '@':
    case '+':
    case '~':
    case '%':
    case '#':
    case '=':
      return true;
    default:
      return false;
  }
}

/// A UUID (8-4-4-4-12 hex digits) at `at`.
bool uuid_at(std::string_view w, std::size_t at) {
  constexpr std::string_view kShape = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";
  if (w.size() - at < kShape.size()) return false;
  for (std::size_t i = 0; i < kShape.size(); ++i) {
    auto c = static_cast<unsigned char>(w[at + i]);
    if (kShape[i] == '-' ? c != '-' : !is_hex(c)) return false;
  }
  return true;
}

/// One run of letters and digits.
void run(std::string_view r, std::string& out) {
  bool digits = false, letters = false, hex = true;
  for (unsigned char c : r) {
    digits |= is_digit(c);
    letters |= !is_digit(c);
    hex &= is_hex(c);
  }
  if (!letters) {
    out += "<n>";
  } else if (r.size() > 2 && r[0] == '0' && (r[1] == 'x' || r[1] == 'X') &&
             r.substr(2).find_first_not_of("0123456789abcdefABCDEF") == std::string_view::npos) {
    out += "<hex>";
  } else if (hex && digits && r.size() >= 6) {
    out += "<hex>";
  } else if (auto n = r.find_first_not_of("0123456789");
             n > 0 && r.size() - n <= 3 &&
             r.find_first_of("0123456789", n) == std::string_view::npos) {
    out += "<n>";  // A number with its unit: 30ms, 5s, 12KB.
    out += r.substr(n);
  } else if (digits) {
    out += "<id>";
  } else {
    out += r;
  }
}

bool is_path(std::string_view w) {
  if (w.size() < 2) return false;
  if (w[0] == '/') return true;
  if (w.rfind("./", 0) == 0 || w.rfind("../", 0) == 0 || w.rfind("~/", 0) == 0) return true;
  return w.size() > 3 && is_alnum(static_cast<unsigned char>(w[0])) && w[1] == ':' &&
         w[2] == '\\';  // C:\…
}

void word(std::string_view w, std::string& out) {
  // Sentence punctuation after a word is not part of it: "/tmp/x.sh:" is a path and a colon.
  std::size_t end = w.size();
  while (end > 0 &&
         (w[end - 1] == '.' || w[end - 1] == ',' || w[end - 1] == ':' || w[end - 1] == '=')) {
    --end;
  }
  auto tail = w.substr(end);
  w = w.substr(0, end);
  if (w.find("://") != std::string_view::npos) {
    out += "<url>";
  } else if (is_path(w)) {
    out += "<path>";
  } else {
    std::size_t i = 0;
    while (i < w.size()) {
      auto c = static_cast<unsigned char>(w[i]);
      if (!is_alnum(c)) {
        out += static_cast<char>(c);
        ++i;
        continue;
      }
      if ((i == 0 || !is_alnum(static_cast<unsigned char>(w[i - 1]))) && uuid_at(w, i) &&
          (i + 36 == w.size() || !is_alnum(static_cast<unsigned char>(w[i + 36])))) {
        out += "<uuid>";
        i += 36;
        continue;
      }
      std::size_t j = i;
      while (j < w.size() && is_alnum(static_cast<unsigned char>(w[j]))) ++j;
      run(w.substr(i, j - i), out);
      i = j;
    }
  }
  out += tail;
}

/// At most `limit` bytes, not cutting a UTF-8 sequence in two.
void cut(std::string& text, std::size_t limit) {
  if (text.size() <= limit) return;
  while (limit > 0 && (static_cast<unsigned char>(text[limit]) & 0xC0) == 0x80) --limit;
  text.resize(limit);
}

}  // namespace

std::string normalise_error(std::string_view error) {
  auto s = error.substr(0, kNormaliseInput);
  std::string out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size() && out.size() <= kNormalisedLimit) {
    auto c = static_cast<unsigned char>(s[i]);
    if (is_space(c)) {
      if (!out.empty() && out.back() != ' ') out += ' ';
      ++i;
      continue;
    }
    // A quote opens at the start of a word ("can't" is no quote) and closes before a non-word
    // character, on the same line, within 512 bytes.
    if (is_quote(c) && (i == 0 || !is_alnum(static_cast<unsigned char>(s[i - 1])))) {
      std::size_t j = i + 1;
      bool closed = false;
      for (; j < s.size() && j - i <= 512 && s[j] != '\n'; ++j) {
        if (s[j] == s[i] &&
            (j + 1 == s.size() || !is_alnum(static_cast<unsigned char>(s[j + 1])))) {
          closed = true;
          break;
        }
      }
      if (closed) {
        out += static_cast<char>(c);
        out += "<str>";
        out += static_cast<char>(c);
        i = j + 1;
        continue;
      }
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    if (is_word(c)) {
      std::size_t j = i;
      while (j < s.size() && is_word(static_cast<unsigned char>(s[j]))) ++j;
      word(s.substr(i, j - i), out);
      i = j;
      continue;
    }
    out += static_cast<char>(c);
    ++i;
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  cut(out, kNormalisedLimit);
  return out;
}

std::string failure_group_id(std::string_view topic, std::string_view subscription,
                             std::string_view handler, std::string_view normalised_error) {
  std::uint64_t hash = 14695981039346656037ULL;
  for (auto part : {topic, subscription, handler, normalised_error}) {
    for (unsigned char c : part) {
      hash ^= c;
      hash *= 1099511628211ULL;
    }
    hash ^= 0;  // The NUL that ends each part.
    hash *= 1099511628211ULL;
  }
  constexpr std::string_view kHex = "0123456789abcdef";
  std::string id(16, '0');
  for (int i = 15; i >= 0; --i) {
    id[static_cast<std::size_t>(i)] = kHex[hash & 15];
    hash >>= 4;
  }
  return id;
}

}  // namespace metro::ledger
