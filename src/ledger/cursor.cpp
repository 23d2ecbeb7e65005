// Page cursors, shared by every ledger and checked by the API before a ledger sees one.

#include <charconv>

#include <metro/ledger/ledger.hpp>

namespace metro::ledger {

std::string cursor_of(const MessageKey& key) {
  return key.topic + "\n" + key.subscription + "\n" + std::to_string(key.sequence_number) + "\n" +
         std::to_string(key.generation);
}

namespace {

/// A whole, non-negative decimal number and nothing else.
std::optional<std::int64_t> number(std::string_view text) {
  std::int64_t value = 0;
  const char* first = text.data();
  const char* last = text.data() + text.size();
  if (first == last || *first == '-' || *first == '+') return std::nullopt;
  auto [end, error] = std::from_chars(first, last, value);
  if (error != std::errc() || end != last) return std::nullopt;
  return value;
}

}  // namespace

std::optional<MessageKey> parse_cursor(std::string_view cursor) {
  auto a = cursor.find('\n');
  auto b = a == std::string_view::npos ? a : cursor.find('\n', a + 1);
  if (b == std::string_view::npos) return std::nullopt;
  auto c = cursor.find('\n', b + 1);
  auto sequence = number(cursor.substr(b + 1, c == std::string_view::npos ? c : c - b - 1));
  if (!sequence) return std::nullopt;
  std::optional<std::int64_t> generation = 0;
  if (c != std::string_view::npos) generation = number(cursor.substr(c + 1));
  if (!generation) return std::nullopt;
  return MessageKey{std::string(cursor.substr(0, a)), std::string(cursor.substr(a + 1, b - a - 1)),
                    *sequence, *generation};
}

}  // namespace metro::ledger
