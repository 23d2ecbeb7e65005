#pragma once

// AMQP 1.0 encodings built byte by byte, for input no SDK would send: values nested 100,000 deep
// (lists, maps, arrays, chains of described values) and message sections around them. Built from
// the outside in with the sizes computed, so a 900 KB value takes linear time.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace metro::test::amqp_bytes {

inline std::string be32(std::uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

/// A list32 holding a list32 … `depth` lists in all, the innermost empty (list0).
inline std::string nested_lists(std::size_t depth) {
  std::string out;
  out.reserve(depth * 9 + 1);
  for (std::size_t level = 1; level < depth; ++level) {
    // This list holds the rest: (depth - level - 1) list32 headers and the list0.
    auto inner = 9 * (depth - level - 1) + 1;
    out += '\xd0';
    out += be32(static_cast<std::uint32_t>(4 + inner));
    out += be32(1);
  }
  out += '\x45';
  return out;
}

/// A map32 `{k: {k: … {}}}`, `depth` maps in all.
inline std::string nested_maps(std::size_t depth) {
  std::string out;
  out.reserve(depth * 12 + 3);
  for (std::size_t level = 1; level < depth; ++level) {
    auto inner = 12 * (depth - level - 1) + 3;
    out += '\xd1';
    out += be32(static_cast<std::uint32_t>(4 + 3 + inner));
    out += be32(2);
    out += std::string("\xa3\x01k", 3);
  }
  out += std::string("\xc1\x01\x00", 3);
  return out;
}

/// An array32 of one array32 of one … `depth` arrays in all, the innermost empty.
inline std::string nested_arrays(std::size_t depth) {
  std::string out;
  out.reserve(depth * 9 + 1);
  out += '\xf0';
  for (std::size_t level = 1; level < depth; ++level) {
    auto inner = 9 * (depth - level);  // the element's body (size, count, constructor, …)
    out += be32(static_cast<std::uint32_t>(4 + 1 + inner));
    out += be32(1);
    out += '\xf0';
  }
  out += be32(5);
  out += be32(0);
  out += '\x40';
  return out;
}

/// A described value whose value is described … `depth` times, around a null.
inline std::string described_chain(std::size_t depth) {
  std::string out;
  out.reserve(depth * 3 + 1);
  for (std::size_t i = 0; i < depth; ++i) out += std::string("\x00\x53\x01", 3);
  out += '\x40';
  return out;
}

/// `{"key": value}` as a map32 with a str8 key.
inline std::string map_of(std::string_view key, std::string_view value) {
  std::string entry;
  entry += '\xa1';
  entry += static_cast<char>(key.size());
  entry += key;
  entry += value;
  return std::string("\xd1", 1) + be32(static_cast<std::uint32_t>(4 + entry.size())) + be32(2) +
         entry;
}

/// A message section: the descriptor `0x00 0x53 code` and its value.
inline std::string section(std::uint8_t code, std::string_view value) {
  return std::string("\x00\x53", 2) + static_cast<char>(code) + std::string(value);
}

/// A data section holding `payload`.
inline std::string data_section(std::string_view payload) {
  return section(0x75, std::string("\xb0", 1) + be32(static_cast<std::uint32_t>(payload.size())) +
                           std::string(payload));
}

inline constexpr std::uint8_t kApplicationProperties = 0x74;
inline constexpr std::uint8_t kMessageAnnotations = 0x72;
inline constexpr std::uint8_t kAmqpSequence = 0x76;
inline constexpr std::uint8_t kAmqpValue = 0x77;

}  // namespace metro::test::amqp_bytes
