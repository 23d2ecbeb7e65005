// A linear walk over an AMQP encoding, without recursion, before anything decodes it.

#include "encoding_check.hpp"

#include <cstdio>
#include <vector>

namespace metro::amqp {
namespace {

DecodeError too_deep(std::size_t at) {
  return DecodeError("the value is nested more than " + std::to_string(kMaxDepth) +
                     " levels deep (at byte " + std::to_string(at) + ")");
}

/// The width of a primitive's fixed-size body, by constructor; -1 for variable-width and compound
/// types, -2 for codes AMQP does not define.
int fixed_width(std::uint8_t code) {
  switch (code) {
    case 0x40:  // null
    case 0x41:  // true
    case 0x42:  // false
    case 0x43:  // uint0
    case 0x44:  // ulong0
    case 0x45:  // list0
      return 0;
    case 0x50:  // ubyte
    case 0x51:  // byte
    case 0x52:  // smalluint
    case 0x53:  // smallulong
    case 0x54:  // smallint
    case 0x55:  // smalllong
    case 0x56:  // boolean
      return 1;
    case 0x60:  // ushort
    case 0x61:  // short
      return 2;
    case 0x70:  // uint
    case 0x71:  // int
    case 0x72:  // float
    case 0x73:  // char
    case 0x74:  // decimal32
      return 4;
    case 0x80:  // ulong
    case 0x81:  // long
    case 0x82:  // double
    case 0x83:  // timestamp
    case 0x84:  // decimal64
      return 8;
    case 0x94:  // decimal128
    case 0x98:  // uuid
      return 16;
    case 0xa0:
    case 0xa1:
    case 0xa3:
    case 0xb0:
    case 0xb1:
    case 0xb3:
    case 0xc0:
    case 0xc1:
    case 0xd0:
    case 0xd1:
    case 0xe0:
    case 0xf0:
      return -1;
    default:
      return -2;
  }
}

}  // namespace

// Constructor by constructor, `count` elements per compound, as Proton's decoder goes; the open
// compounds are a stack of counters instead of a recursion.
std::size_t check_encoding(std::string_view bytes) {
  std::size_t pos = 0;
  auto need = [&](std::size_t n) {
    if (bytes.size() - pos < n) {
      throw DecodeError("not a valid AMQP encoding: it ends in the middle of a value (at byte " +
                        std::to_string(pos) + ")");
    }
  };
  auto byte = [&]() -> std::uint8_t {
    need(1);
    return static_cast<std::uint8_t>(bytes[pos++]);
  };
  auto u32 = [&]() -> std::uint32_t {
    need(4);
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<std::uint8_t>(bytes[pos++]);
    return v;
  };
  auto unknown = [&](std::uint8_t code, std::size_t at) {
    char hex[8];
    std::snprintf(hex, sizeof(hex), "0x%02x", code);
    return DecodeError(std::string("not a valid AMQP encoding: unknown type code ") + hex +
                       " at byte " + std::to_string(at));
  };

  // One open compound: how many elements are still to come, and (arrays) their constructor.
  struct Open {
    std::uint64_t remaining;
    std::size_t depth;  // of its elements
    int element_code;   // -1: each element has its own constructor
  };
  std::vector<Open> open;

  // Reads a constructor: a type code, or descriptor + type code for a described value, which
  // counts as a level.
  auto constructor = [&](std::size_t& depth) -> std::uint8_t {
    auto code = byte();
    if (code == 0x00) {
      if (++depth > kMaxDepth) throw too_deep(pos - 1);
      auto at = pos;
      auto descriptor = byte();
      auto width = fixed_width(descriptor);
      if (width == -2 || descriptor == 0x00 || (descriptor & 0xf0) >= 0xc0 || descriptor == 0x45) {
        // Proton refuses compound and described descriptors too.
        throw unknown(descriptor, at);
      }
      if (width >= 0) {
        need(static_cast<std::size_t>(width));
        pos += static_cast<std::size_t>(width);
      } else {
        std::size_t size = (descriptor & 0xf0) == 0xa0 ? byte() : u32();
        need(size);
        pos += size;
      }
      code = byte();
      if (code == 0x00) {
        // Proton's decoder miscounts a described value that describes another one inside a
        // compound (elements shift); no AMQP peer of Service Bus sends one.
        throw DecodeError(
            "not a valid AMQP encoding: a described value describes another described value (at "
            "byte " +
            std::to_string(pos - 1) + ")");
      }
    }
    return code;
  };

  // Reads the body of a value whose constructor is `code`; opens a compound for its elements.
  auto body = [&](std::uint8_t code, std::size_t depth, std::size_t at) {
    auto width = fixed_width(code);
    if (width == -2) throw unknown(code, at);
    if (code == 0x45 && depth + 1 > kMaxDepth) throw too_deep(at);  // list0 is a level too
    if (width >= 0) {
      need(static_cast<std::size_t>(width));
      pos += static_cast<std::size_t>(width);
      return;
    }
    switch (code & 0xf0) {
      case 0xa0:
      case 0xb0: {
        std::size_t size = (code & 0xf0) == 0xa0 ? byte() : u32();
        need(size);
        pos += size;
        return;
      }
      default:
        break;
    }
    // list8/map8/array8 or their 32-bit forms: size, count, (arrays) element constructor.
    bool small = (code & 0xf0) == 0xc0 || code == 0xe0;
    std::size_t size = small ? byte() : u32();
    need(size);
    std::uint64_t count = small ? byte() : u32();
    if (count > size) {
      throw DecodeError("not a valid AMQP encoding: " + std::to_string(count) +
                        " elements cannot fit in " + std::to_string(size) + " bytes (at byte " +
                        std::to_string(at) + ")");
    }
    if (depth + 1 > kMaxDepth) throw too_deep(at);
    int element = -1;
    if (code == 0xe0 || code == 0xf0) {
      std::size_t element_depth = depth + 1;
      auto element_at = pos;
      auto element_code = constructor(element_depth);
      if (fixed_width(element_code) == -2) throw unknown(element_code, element_at);
      element = element_code;
    }
    open.push_back({count, depth + 1, element});
  };

  std::size_t depth = 0;
  auto at = pos;
  body(constructor(depth), depth, at);
  while (!open.empty()) {
    auto& top = open.back();
    if (top.remaining == 0) {
      open.pop_back();
      continue;
    }
    --top.remaining;
    std::size_t element_depth = top.depth;
    at = pos;
    auto code = top.element_code >= 0 ? static_cast<std::uint8_t>(top.element_code)
                                      : constructor(element_depth);
    body(code, element_depth, at);  // may push: `top` is not used after this
  }
  return pos;
}

}  // namespace metro::amqp
