// amqp::Value: the value itself, the simple values of properties and filters, and UUIDs.
// Conversion to and from Proton and the wire is value_pn.cpp.

#include "value.hpp"

#include <limits>

#include <openssl/rand.h>

namespace metro::amqp {
namespace {

const char* name_of(Type t) {
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

}  // namespace

std::string_view type_name(Type type) { return name_of(type); }

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
  items.reserve(2);
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
    throw DecodeError(std::string("expected a boolean, got ") + name_of(type_));
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
  throw DecodeError(std::string("expected an integer, got ") + name_of(type_));
}

std::uint64_t Value::as_uint64() const {
  if (auto* u = std::get_if<std::uint64_t>(&storage_)) return *u;
  if (auto* i = std::get_if<std::int64_t>(&storage_); i && *i >= 0) {
    return static_cast<std::uint64_t>(*i);
  }
  throw DecodeError(std::string("expected an unsigned integer, got ") + name_of(type_));
}

double Value::as_double() const {
  if (auto* d = std::get_if<double>(&storage_)) return *d;
  if (is_integer()) return static_cast<double>(as_int64());
  throw DecodeError(std::string("expected a number, got ") + name_of(type_));
}

const std::string& Value::as_bytes() const {
  if (auto* s = std::get_if<std::string>(&storage_)) return *s;
  throw DecodeError(std::string("expected a string, got ") + name_of(type_));
}

std::string& Value::as_bytes() {
  if (auto* s = std::get_if<std::string>(&storage_)) return *s;
  throw DecodeError(std::string("expected a string, got ") + name_of(type_));
}

const Uuid& Value::as_uuid() const {
  if (auto* u = std::get_if<Uuid>(&storage_)) return *u;
  throw DecodeError(std::string("expected a uuid, got ") + name_of(type_));
}

std::int64_t Value::as_timestamp() const {
  if (type_ == Type::kTimestamp) return std::get<std::int64_t>(storage_);
  throw DecodeError(std::string("expected a timestamp, got ") + name_of(type_));
}

const std::vector<Value>& Value::items() const {
  if (auto* v = std::get_if<std::vector<Value>>(&storage_)) return *v;
  throw DecodeError(std::string("expected a list, map or array, got ") + name_of(type_));
}

std::vector<Value>& Value::items() {
  if (auto* v = std::get_if<std::vector<Value>>(&storage_)) return *v;
  throw DecodeError(std::string("expected a list, map or array, got ") + name_of(type_));
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
