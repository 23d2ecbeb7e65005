#include "value.hpp"

#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>

#include <openssl/rand.h>
#include <proton/codec.h>

#include "value_pn.hpp"

namespace metro::amqp {
namespace {

struct DataDeleter {
  void operator()(pn_data_t* d) const { pn_data_free(d); }
};
using Data = std::unique_ptr<pn_data_t, DataDeleter>;

pn_bytes_t bytes_of(const std::string& s) { return pn_bytes(s.size(), s.data()); }

const char* type_name(Type t) {
  switch (t) {
    case Type::kNull:
      return "null";
    case Type::kBool:
      return "boolean";
    case Type::kUbyte:
      return "ubyte";
    case Type::kUshort:
      return "ushort";
    case Type::kUint:
      return "uint";
    case Type::kUlong:
      return "ulong";
    case Type::kByte:
      return "byte";
    case Type::kShort:
      return "short";
    case Type::kInt:
      return "int";
    case Type::kLong:
      return "long";
    case Type::kFloat:
      return "float";
    case Type::kDouble:
      return "double";
    case Type::kChar:
      return "char";
    case Type::kTimestamp:
      return "timestamp";
    case Type::kUuid:
      return "uuid";
    case Type::kBinary:
      return "binary";
    case Type::kString:
      return "string";
    case Type::kSymbol:
      return "symbol";
    case Type::kList:
      return "list";
    case Type::kMap:
      return "map";
    case Type::kArray:
      return "array";
    case Type::kDescribed:
      return "described";
  }
  return "?";
}

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
          throw DecodeError(std::string("an array of ") + type_name(element) + " holds a " +
                            type_name(item.type()));
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

// ---- A linear walk over an encoding, before Proton decodes it ----------------------------------

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

/// Walks one encoded value the way Proton's decoder will (constructor by constructor, `count`
/// elements per compound), without recursing: checks that every size and count fits in the
/// bytes there are and that nothing nests deeper than kMaxDepth. Returns the value's length.
std::size_t walk(std::string_view bytes) {
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

Value Value::map(std::vector<std::pair<Value, Value>> entries) {
  std::vector<Value> flat;
  flat.reserve(entries.size() * 2);
  for (auto& [k, v] : entries) {
    flat.push_back(std::move(k));
    flat.push_back(std::move(v));
  }
  return Value(Type::kMap, std::move(flat));
}

Value Value::array(Type element_type, std::vector<Value> items) {
  Value v(Type::kArray, std::move(items));
  v.array_type_ = element_type;
  return v;
}

Value Value::described(Value descriptor, Value value) {
  std::vector<Value> items;
  items.push_back(std::move(descriptor));
  items.push_back(std::move(value));
  return Value(Type::kDescribed, std::move(items));
}

bool Value::is_integer() const {
  switch (type_) {
    case Type::kUbyte:
    case Type::kUshort:
    case Type::kUint:
    case Type::kUlong:
    case Type::kByte:
    case Type::kShort:
    case Type::kInt:
    case Type::kLong:
      return true;
    default:
      return false;
  }
}

bool Value::as_bool() const {
  if (type_ != Type::kBool)
    throw DecodeError(std::string("expected a boolean, got ") + type_name(type_));
  return std::get<bool>(storage_);
}

std::int64_t Value::as_int64() const {
  if (auto* i = std::get_if<std::int64_t>(&storage_)) return *i;
  if (auto* u = std::get_if<std::uint64_t>(&storage_); u && type_ != Type::kChar) {
    if (*u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      throw DecodeError("integer out of range");
    }
    return static_cast<std::int64_t>(*u);
  }
  throw DecodeError(std::string("expected an integer, got ") + type_name(type_));
}

std::uint64_t Value::as_uint64() const {
  if (auto* u = std::get_if<std::uint64_t>(&storage_)) return *u;
  if (auto* i = std::get_if<std::int64_t>(&storage_); i && *i >= 0) {
    return static_cast<std::uint64_t>(*i);
  }
  throw DecodeError(std::string("expected an unsigned integer, got ") + type_name(type_));
}

double Value::as_double() const {
  if (auto* d = std::get_if<double>(&storage_)) return *d;
  if (is_integer()) return static_cast<double>(as_int64());
  throw DecodeError(std::string("expected a number, got ") + type_name(type_));
}

const std::string& Value::as_bytes() const {
  if (auto* s = std::get_if<std::string>(&storage_)) return *s;
  throw DecodeError(std::string("expected a string, got ") + type_name(type_));
}

const Uuid& Value::as_uuid() const {
  if (auto* u = std::get_if<Uuid>(&storage_)) return *u;
  throw DecodeError(std::string("expected a uuid, got ") + type_name(type_));
}

std::int64_t Value::as_timestamp() const {
  if (type_ == Type::kTimestamp) return std::get<std::int64_t>(storage_);
  throw DecodeError(std::string("expected a timestamp, got ") + type_name(type_));
}

const std::vector<Value>& Value::items() const {
  if (auto* v = std::get_if<std::vector<Value>>(&storage_)) return *v;
  throw DecodeError(std::string("expected a list, map or array, got ") + type_name(type_));
}

std::vector<Value>& Value::items() {
  if (auto* v = std::get_if<std::vector<Value>>(&storage_)) return *v;
  throw DecodeError(std::string("expected a list, map or array, got ") + type_name(type_));
}

const Value* Value::find(std::string_view key) const {
  if (type_ != Type::kMap) return nullptr;
  const auto& flat = items();
  for (std::size_t i = 0; i + 1 < flat.size(); i += 2) {
    if (flat[i].is_text() && flat[i].as_bytes() == key) return &flat[i + 1];
  }
  return nullptr;
}

void Value::set(Value key, Value value) {
  if (type_ == Type::kNull) *this = Value::map({});
  auto& flat = items();
  for (std::size_t i = 0; i + 1 < flat.size(); i += 2) {
    if (flat[i].is_text() && key.is_text() && flat[i].as_bytes() == key.as_bytes()) {
      flat[i + 1] = std::move(value);
      return;
    }
  }
  flat.push_back(std::move(key));
  flat.push_back(std::move(value));
}

void Value::erase(std::string_view key) {
  if (type_ != Type::kMap) return;
  auto& flat = items();
  for (std::size_t i = 0; i + 1 < flat.size();) {
    if (flat[i].is_text() && flat[i].as_bytes() == key) {
      flat.erase(flat.begin() + static_cast<std::ptrdiff_t>(i),
                 flat.begin() + static_cast<std::ptrdiff_t>(i + 2));
    } else {
      i += 2;
    }
  }
}

std::string Value::to_string() const {
  switch (type_) {
    case Type::kNull:
      return "null";
    case Type::kBool:
      return as_bool() ? "true" : "false";
    case Type::kString:
      return "\"" + as_bytes() + "\"";
    case Type::kSymbol:
      return ":" + as_bytes();
    case Type::kBinary:
      return "b(" + std::to_string(as_bytes().size()) + " bytes)";
    case Type::kUuid:
      return amqp::to_string(as_uuid());
    case Type::kFloat:
    case Type::kDouble:
      return std::to_string(as_double());
    case Type::kList:
    case Type::kMap:
    case Type::kArray:
    case Type::kDescribed: {
      std::string out = type_ == Type::kMap ? "{" : (type_ == Type::kDescribed ? "@" : "[");
      bool first = true;
      for (const auto& item : items()) {
        if (!first) out += ", ";
        first = false;
        out += item.to_string();
      }
      return out + (type_ == Type::kMap ? "}" : (type_ == Type::kDescribed ? "" : "]"));
    }
    default:
      if (auto* i = std::get_if<std::int64_t>(&storage_)) return std::to_string(*i);
      return std::to_string(std::get<std::uint64_t>(storage_));
  }
}

bool operator==(const Value& a, const Value& b) {
  return a.type_ == b.type_ && a.array_type_ == b.array_type_ && a.storage_ == b.storage_;
}

Simple to_simple(const Value& v) {
  switch (v.type()) {
    case Type::kBool:
      return v.as_bool();
    case Type::kFloat:
    case Type::kDouble:
      return v.as_double();
    case Type::kString:
    case Type::kSymbol:
      return v.as_bytes();
    case Type::kTimestamp:
      return v.as_timestamp();
    case Type::kUuid:
      return to_string(v.as_uuid());
    default:
      if (!v.is_integer()) return std::monostate{};
      if (v.type() == Type::kUlong && v.as_uint64() > static_cast<std::uint64_t>(INT64_MAX)) {
        return static_cast<double>(v.as_uint64());
      }
      return v.as_int64();
  }
}

Value from_simple(const Simple& s) {
  if (const auto* b = std::get_if<bool>(&s)) return Value::boolean(*b);
  if (const auto* i = std::get_if<std::int64_t>(&s)) return Value::long_(*i);
  if (const auto* d = std::get_if<double>(&s)) return Value::double_(*d);
  if (const auto* t = std::get_if<std::string>(&s)) return Value::string(*t);
  return Value::null();
}

std::string encode(const Value& value) {
  Data d(pn_data(16));
  put(d.get(), value);
  std::string out(256, '\0');
  while (true) {
    auto n = pn_data_encode(d.get(), out.data(), out.size());
    if (n >= 0) {
      out.resize(static_cast<std::size_t>(n));
      return out;
    }
    if (n != PN_OVERFLOW) throw Error("AMQP encoding failed");
    out.resize(out.size() * 2);
  }
}

Value decode(std::string_view bytes, std::size_t* consumed) {
  if (bytes.empty()) throw DecodeError("no bytes to decode");
  // Bounded and checked first: Proton's decoder, and everything after it, recurse per level.
  auto length = walk(bytes);
  Data d(pn_data(16));
  auto n = pn_data_decode(d.get(), bytes.data(), length);
  if (n <= 0) throw DecodeError("not a valid AMQP encoding");
  if (consumed != nullptr) *consumed = static_cast<std::size_t>(n);
  pn_data_rewind(d.get());
  if (!pn_data_next(d.get())) throw DecodeError("not a valid AMQP encoding");
  return get(d.get(), 0);
}

std::string to_string(const Uuid& u) {
  constexpr std::string_view kHex = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += kHex[u[i] >> 4];
    out += kHex[u[i] & 0xF];
  }
  return out;
}

std::optional<Uuid> uuid_from_string(std::string_view text) {
  Uuid u{};
  std::size_t n = 0;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '-') continue;
    if (n >= 32 || i + 1 >= text.size()) return std::nullopt;
    int hi = hex(text[i]);
    int lo = hex(text[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    u[n / 2] = static_cast<std::uint8_t>(hi * 16 + lo);
    n += 2;
    ++i;
  }
  if (n != 32) return std::nullopt;
  return u;
}

Uuid random_uuid() {
  Uuid u{};
  if (RAND_bytes(u.data(), static_cast<int>(u.size())) != 1) throw Error("no random bytes");
  u[6] = static_cast<std::uint8_t>((u[6] & 0x0F) | 0x40);
  u[8] = static_cast<std::uint8_t>((u[8] & 0x3F) | 0x80);
  return u;
}

Uuid swap_guid_bytes(const Uuid& u) {
  return {u[3], u[2], u[1],  u[0],  u[5],  u[4],  u[7],  u[6],
          u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]};
}

}  // namespace metro::amqp
