// amqp::Value to and from Proton's pn_data_t, and the wire encoding. What comes from the network
// is walked by check_encoding() first, so nothing here recurses deeper than kMaxDepth.

#include "value_pn.hpp"

#include <cstring>
#include <memory>

#include <proton/codec.h>

#include "encoding_check.hpp"
#include "value.hpp"

namespace metro::amqp {
namespace {

struct DataDeleter {
  void operator()(pn_data_t* d) const { pn_data_free(d); }
};
using Data = std::unique_ptr<pn_data_t, DataDeleter>;

pn_bytes_t bytes_of(const std::string& s) { return pn_bytes(s.size(), s.data()); }

pn_type_t to_pn(Type t) {
  switch (t) {
    case Type::kNull:
      return PN_NULL;
    case Type::kBool:
      return PN_BOOL;
    case Type::kUbyte:
      return PN_UBYTE;
    case Type::kUshort:
      return PN_USHORT;
    case Type::kUint:
      return PN_UINT;
    case Type::kUlong:
      return PN_ULONG;
    case Type::kByte:
      return PN_BYTE;
    case Type::kShort:
      return PN_SHORT;
    case Type::kInt:
      return PN_INT;
    case Type::kLong:
      return PN_LONG;
    case Type::kFloat:
      return PN_FLOAT;
    case Type::kDouble:
      return PN_DOUBLE;
    case Type::kChar:
      return PN_CHAR;
    case Type::kTimestamp:
      return PN_TIMESTAMP;
    case Type::kUuid:
      return PN_UUID;
    case Type::kBinary:
      return PN_BINARY;
    case Type::kString:
      return PN_STRING;
    case Type::kSymbol:
      return PN_SYMBOL;
    case Type::kList:
      return PN_LIST;
    case Type::kMap:
      return PN_MAP;
    case Type::kArray:
      return PN_ARRAY;
    case Type::kDescribed:
      return PN_DESCRIBED;
  }
  return PN_NULL;
}

std::optional<Type> from_pn(pn_type_t t) {
  switch (t) {
    case PN_NULL:
      return Type::kNull;
    case PN_BOOL:
      return Type::kBool;
    case PN_UBYTE:
      return Type::kUbyte;
    case PN_USHORT:
      return Type::kUshort;
    case PN_UINT:
      return Type::kUint;
    case PN_ULONG:
      return Type::kUlong;
    case PN_BYTE:
      return Type::kByte;
    case PN_SHORT:
      return Type::kShort;
    case PN_INT:
      return Type::kInt;
    case PN_LONG:
      return Type::kLong;
    case PN_FLOAT:
      return Type::kFloat;
    case PN_DOUBLE:
      return Type::kDouble;
    case PN_CHAR:
      return Type::kChar;
    case PN_TIMESTAMP:
      return Type::kTimestamp;
    case PN_UUID:
      return Type::kUuid;
    case PN_BINARY:
      return Type::kBinary;
    case PN_STRING:
      return Type::kString;
    case PN_SYMBOL:
      return Type::kSymbol;
    case PN_LIST:
      return Type::kList;
    case PN_MAP:
      return Type::kMap;
    case PN_ARRAY:
      return Type::kArray;
    case PN_DESCRIBED:
      return Type::kDescribed;
    default:
      return std::nullopt;  // decimals and other types Service Bus does not use
  }
}

void put(pn_data_t* d, const Value& v);

void put_items(pn_data_t* d, const Value& v) {
  pn_data_enter(d);
  for (const auto& item : v.items()) put(d, item);
  pn_data_exit(d);
}

void put(pn_data_t* d, const Value& v) {
  switch (v.type()) {
    case Type::kNull:
      pn_data_put_null(d);
      break;
    case Type::kBool:
      pn_data_put_bool(d, v.as_bool());
      break;
    case Type::kUbyte:
      pn_data_put_ubyte(d, static_cast<std::uint8_t>(v.as_uint64()));
      break;
    case Type::kUshort:
      pn_data_put_ushort(d, static_cast<std::uint16_t>(v.as_uint64()));
      break;
    case Type::kUint:
      pn_data_put_uint(d, static_cast<std::uint32_t>(v.as_uint64()));
      break;
    case Type::kUlong:
      pn_data_put_ulong(d, v.as_uint64());
      break;
    case Type::kByte:
      pn_data_put_byte(d, static_cast<std::int8_t>(v.as_int64()));
      break;
    case Type::kShort:
      pn_data_put_short(d, static_cast<std::int16_t>(v.as_int64()));
      break;
    case Type::kInt:
      pn_data_put_int(d, static_cast<std::int32_t>(v.as_int64()));
      break;
    case Type::kLong:
      pn_data_put_long(d, v.as_int64());
      break;
    case Type::kFloat:
      pn_data_put_float(d, static_cast<float>(v.as_double()));
      break;
    case Type::kDouble:
      pn_data_put_double(d, v.as_double());
      break;
    case Type::kChar:
      pn_data_put_char(d, static_cast<pn_char_t>(v.as_uint64()));
      break;
    case Type::kTimestamp:
      pn_data_put_timestamp(d, v.as_timestamp());
      break;
    case Type::kUuid: {
      pn_uuid_t u;
      std::memcpy(u.bytes, v.as_uuid().data(), 16);
      pn_data_put_uuid(d, u);
      break;
    }
    case Type::kBinary:
      pn_data_put_binary(d, bytes_of(v.as_bytes()));
      break;
    case Type::kString:
      pn_data_put_string(d, bytes_of(v.as_bytes()));
      break;
    case Type::kSymbol:
      pn_data_put_symbol(d, bytes_of(v.as_bytes()));
      break;
    case Type::kList:
      pn_data_put_list(d);
      put_items(d, v);
      break;
    case Type::kMap:
      pn_data_put_map(d);
      put_items(d, v);
      break;
    case Type::kArray:
      pn_data_put_array(d, false, to_pn(v.array_type()));
      put_items(d, v);
      break;
    case Type::kDescribed:
      pn_data_put_described(d);
      put_items(d, v);
      break;
  }
}

std::vector<Value> get_children(pn_data_t* d, std::size_t n, std::size_t depth);

DecodeError too_deep(std::size_t at) {
  return DecodeError("the value is nested more than " + std::to_string(kMaxDepth) + " levels deep" +
                     (at == 0 ? "" : " (at byte " + std::to_string(at) + ")"));
}

// `depth` counts the compound and described values around this one; the recursion is bounded by
// kMaxDepth whatever Proton's pn_data_t holds (a transport fills it from the peer's frames).
Value get(pn_data_t* d, std::size_t depth) {
  auto type = from_pn(pn_data_type(d));
  if (!type) {
    throw DecodeError(std::string("unsupported AMQP type ") + pn_type_name(pn_data_type(d)));
  }
  switch (*type) {
    case Type::kNull:
      return Value::null();
    case Type::kBool:
      return Value::boolean(pn_data_get_bool(d));
    case Type::kUbyte:
      return Value::ubyte(pn_data_get_ubyte(d));
    case Type::kUshort:
      return Value::ushort(pn_data_get_ushort(d));
    case Type::kUint:
      return Value::uint(pn_data_get_uint(d));
    case Type::kUlong:
      return Value::ulong(pn_data_get_ulong(d));
    case Type::kByte:
      return Value::byte(pn_data_get_byte(d));
    case Type::kShort:
      return Value::short_(pn_data_get_short(d));
    case Type::kInt:
      return Value::int_(pn_data_get_int(d));
    case Type::kLong:
      return Value::long_(pn_data_get_long(d));
    case Type::kFloat:
      return Value::float_(pn_data_get_float(d));
    case Type::kDouble:
      return Value::double_(pn_data_get_double(d));
    case Type::kChar:
      return Value::char_(pn_data_get_char(d));
    case Type::kTimestamp:
      return Value::timestamp(pn_data_get_timestamp(d));
    case Type::kUuid: {
      Uuid u;
      auto raw = pn_data_get_uuid(d);
      std::memcpy(u.data(), raw.bytes, 16);
      return Value::uuid(u);
    }
    case Type::kBinary: {
      auto b = pn_data_get_binary(d);
      return Value::binary(std::string(b.start, b.size));
    }
    case Type::kString: {
      auto b = pn_data_get_string(d);
      return Value::string(std::string(b.start, b.size));
    }
    case Type::kSymbol: {
      auto b = pn_data_get_symbol(d);
      return Value::symbol(std::string(b.start, b.size));
    }
    case Type::kList:
      return Value::list(get_children(d, pn_data_get_list(d), depth + 1));
    case Type::kMap: {
      auto flat = get_children(d, pn_data_get_map(d), depth + 1);
      if (flat.size() % 2 != 0) throw DecodeError("a map with an odd number of elements");
      std::vector<std::pair<Value, Value>> entries;
      for (std::size_t i = 0; i < flat.size(); i += 2) {
        entries.emplace_back(std::move(flat[i]), std::move(flat[i + 1]));
      }
      return Value::map(std::move(entries));
    }
    case Type::kArray: {
      auto n = pn_data_get_array(d);
      auto element = from_pn(pn_data_get_array_type(d)).value_or(Type::kNull);
      bool described = pn_data_is_array_described(d);
      auto items = get_children(d, n + (described ? 1 : 0), depth + 1);
      if (described && !items.empty()) items.erase(items.begin());  // element descriptor
      for (const auto& item : items) {
        if (item.type() != element) {
          throw DecodeError(std::string("an array of ") + std::string(type_name(element)) +
                            " holds a " + std::string(type_name(item.type())));
        }
      }
      return Value::array(element, std::move(items));
    }
    case Type::kDescribed: {
      auto items = get_children(d, 2, depth + 1);
      if (items.size() != 2) throw DecodeError("a described value without its value");
      return Value::described(std::move(items[0]), std::move(items[1]));
    }
  }
  return Value::null();
}

std::vector<Value> get_children(pn_data_t* d, std::size_t n, std::size_t depth) {
  if (depth > kMaxDepth) throw too_deep(0);
  std::vector<Value> items;
  items.reserve(n);
  pn_data_enter(d);
  for (std::size_t i = 0; i < n && pn_data_next(d); ++i) items.push_back(get(d, depth));
  pn_data_exit(d);
  return items;
}

}  // namespace

Value read_data(pn_data_t* data) {
  pn_data_rewind(data);
  if (!pn_data_next(data)) return Value::null();
  return get(data, 0);
}

void write_data(pn_data_t* data, const Value& value) {
  pn_data_clear(data);
  put(data, value);
}

namespace {

// One pn_data_t per thread for encode and decode: cleared, not freed, between values, so its
// buffers are allocated once instead of for every value.
pn_data_t* scratch() {
  thread_local Data data(pn_data(16));
  pn_data_clear(data.get());
  return data.get();
}

void put_u8(std::string& out, std::uint8_t b) { out.push_back(static_cast<char>(b)); }

template <typename T>
void put_be(std::string& out, T v) {
  for (int shift = (sizeof(T) - 1) * 8; shift >= 0; shift -= 8) {
    put_u8(out, static_cast<std::uint8_t>(static_cast<std::uint64_t>(v) >> shift));
  }
}

void put_variable(std::string& out, std::uint8_t code8, const std::string& bytes) {
  if (bytes.size() < 256) {
    put_u8(out, code8);
    put_u8(out, static_cast<std::uint8_t>(bytes.size()));
  } else {
    put_u8(out, static_cast<std::uint8_t>(code8 + 0x10));
    put_be(out, static_cast<std::uint32_t>(bytes.size()));
  }
  out += bytes;
}

// The scalars messages carry, written as Proton writes them (its compact forms included);
// false for the others, which go through Proton.
bool put_scalar(std::string& out, const Value& v) {
  switch (v.type()) {
    case Type::kNull:
      put_u8(out, 0x40);
      return true;
    case Type::kBool:
      put_u8(out, v.as_bool() ? 0x41 : 0x42);
      return true;
    case Type::kUbyte:
      put_u8(out, 0x50);
      put_u8(out, static_cast<std::uint8_t>(v.as_uint64()));
      return true;
    case Type::kUshort:
      put_u8(out, 0x60);
      put_be(out, static_cast<std::uint16_t>(v.as_uint64()));
      return true;
    case Type::kUint: {
      auto u = static_cast<std::uint32_t>(v.as_uint64());
      if (u == 0) {
        put_u8(out, 0x43);
      } else if (u < 256) {
        put_u8(out, 0x52);
        put_u8(out, static_cast<std::uint8_t>(u));
      } else {
        put_u8(out, 0x70);
        put_be(out, u);
      }
      return true;
    }
    case Type::kUlong: {
      auto u = v.as_uint64();
      if (u == 0) {
        put_u8(out, 0x44);
      } else if (u < 256) {
        put_u8(out, 0x53);
        put_u8(out, static_cast<std::uint8_t>(u));
      } else {
        put_u8(out, 0x80);
        put_be(out, u);
      }
      return true;
    }
    case Type::kByte:
      put_u8(out, 0x51);
      put_u8(out, static_cast<std::uint8_t>(v.as_int64()));
      return true;
    case Type::kShort:
      put_u8(out, 0x61);
      put_be(out, static_cast<std::uint16_t>(v.as_int64()));
      return true;
    case Type::kInt: {
      auto i = static_cast<std::int32_t>(v.as_int64());
      if (i >= -128 && i <= 127) {
        put_u8(out, 0x54);
        put_u8(out, static_cast<std::uint8_t>(i));
      } else {
        put_u8(out, 0x71);
        put_be(out, static_cast<std::uint32_t>(i));
      }
      return true;
    }
    case Type::kLong: {
      auto i = v.as_int64();
      if (i >= -128 && i <= 127) {
        put_u8(out, 0x55);
        put_u8(out, static_cast<std::uint8_t>(i));
      } else {
        put_u8(out, 0x81);
        put_be(out, static_cast<std::uint64_t>(i));
      }
      return true;
    }
    case Type::kTimestamp:
      put_u8(out, 0x83);
      put_be(out, static_cast<std::uint64_t>(v.as_timestamp()));
      return true;
    case Type::kUuid:
      put_u8(out, 0x98);
      out.append(reinterpret_cast<const char*>(v.as_uuid().data()), 16);
      return true;
    case Type::kBinary:
      put_variable(out, 0xa0, v.as_bytes());
      return true;
    case Type::kString:
      put_variable(out, 0xa1, v.as_bytes());
      return true;
    case Type::kSymbol:
      put_variable(out, 0xa3, v.as_bytes());
      return true;
    default:
      return false;
  }
}

}  // namespace

void encode_into(std::string& out, const Value& value) {
  if (put_scalar(out, value)) return;
  auto* d = scratch();
  put(d, value);
  auto size = pn_data_encoded_size(d);
  if (size < 0) throw Error("AMQP encoding failed");
  auto offset = out.size();
  out.resize(offset + static_cast<std::size_t>(size));
  auto n = pn_data_encode(d, out.data() + offset, static_cast<std::size_t>(size));
  if (n != size) {
    out.resize(offset);
    throw Error("AMQP encoding failed");
  }
}

std::string encode(const Value& value) {
  std::string out;
  encode_into(out, value);
  return out;
}

Value decode(std::string_view bytes, std::size_t* consumed) {
  if (bytes.empty()) throw DecodeError("no bytes to decode");
  // Bounded and checked first: Proton's decoder, and everything after it, recurse per level.
  auto length = check_encoding(bytes);
  auto* d = scratch();
  auto n = pn_data_decode(d, bytes.data(), length);
  if (n <= 0) throw DecodeError("not a valid AMQP encoding");
  if (consumed != nullptr) *consumed = static_cast<std::size_t>(n);
  pn_data_rewind(d);
  if (!pn_data_next(d)) throw DecodeError("not a valid AMQP encoding");
  return get(d, 0);
}

}  // namespace metro::amqp
