#pragma once

// AMQP 1.0 values as plain C++ (null, scalars, strings, lists, maps, arrays, described values),
// with conversion to and from Proton's pn_data_t and the wire encoding. Shared by the Service Bus
// client and the emulator; no Proton type appears here. Thread-safety: values are plain data.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <metro/error.hpp>

namespace metro::amqp {

enum class Type {
  kNull,
  kBool,
  kUbyte,
  kUshort,
  kUint,
  kUlong,
  kByte,
  kShort,
  kInt,
  kLong,
  kFloat,
  kDouble,
  kChar,
  kTimestamp,
  kUuid,
  kBinary,
  kString,
  kSymbol,
  kList,
  kMap,
  kArray,
  kDescribed,
};

/// Deepest nesting of lists, maps, arrays and described values accepted from the network: a
/// deeper value is a DecodeError before anything recurses over it.
inline constexpr std::size_t kMaxDepth = 128;

/// "string", "list", … for messages.
std::string_view type_name(Type type);

/// A UUID in RFC-4122 (network) byte order.
using Uuid = std::array<std::uint8_t, 16>;

/// Bytes that are not a valid AMQP encoding, or a value of an unexpected shape.
class DecodeError : public Error {
 public:
  explicit DecodeError(const std::string& what) : Error(what, false) {}
};

class Value {
 public:
  Value() = default;

  static Value null() { return {}; }
  static Value boolean(bool b) { return Value(Type::kBool, b); }
  static Value ubyte(std::uint8_t v) { return Value(Type::kUbyte, std::uint64_t{v}); }
  static Value ushort(std::uint16_t v) { return Value(Type::kUshort, std::uint64_t{v}); }
  static Value uint(std::uint32_t v) { return Value(Type::kUint, std::uint64_t{v}); }
  static Value ulong(std::uint64_t v) { return Value(Type::kUlong, v); }
  static Value byte(std::int8_t v) { return Value(Type::kByte, std::int64_t{v}); }
  static Value short_(std::int16_t v) { return Value(Type::kShort, std::int64_t{v}); }
  static Value int_(std::int32_t v) { return Value(Type::kInt, std::int64_t{v}); }
  static Value long_(std::int64_t v) { return Value(Type::kLong, v); }
  static Value float_(float v) { return Value(Type::kFloat, double{v}); }
  static Value double_(double v) { return Value(Type::kDouble, v); }
  static Value char_(std::uint32_t v) { return Value(Type::kChar, std::uint64_t{v}); }
  /// Milliseconds since the Unix epoch.
  static Value timestamp(std::int64_t ms) { return Value(Type::kTimestamp, ms); }
  static Value uuid(const Uuid& u) { return Value(Type::kUuid, u); }
  static Value binary(std::string bytes) { return Value(Type::kBinary, std::move(bytes)); }
  static Value string(std::string text) { return Value(Type::kString, std::move(text)); }
  static Value symbol(std::string text) { return Value(Type::kSymbol, std::move(text)); }
  static Value list(std::vector<Value> items) { return Value(Type::kList, std::move(items)); }
  /// A map from key/value pairs, kept in order.
  static Value map(std::vector<std::pair<Value, Value>> entries);
  static Value array(Type element_type, std::vector<Value> items);
  static Value described(Value descriptor, Value value);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_integer() const;
  bool is_text() const { return type_ == Type::kString || type_ == Type::kSymbol; }

  bool as_bool() const;
  /// Any integer type (or a timestamp), range-checked. Throws DecodeError otherwise.
  std::int64_t as_int64() const;
  std::uint64_t as_uint64() const;
  double as_double() const;
  /// String, symbol or binary contents. Throws DecodeError for other types.
  const std::string& as_bytes() const;
  std::string& as_bytes();
  const Uuid& as_uuid() const;
  std::int64_t as_timestamp() const;

  /// List or array elements; map entries flattened key, value, key, value; described: descriptor,
  /// value. Throws DecodeError for scalars.
  const std::vector<Value>& items() const;
  std::vector<Value>& items();
  Type array_type() const { return array_type_; }
  std::size_t map_size() const { return items().size() / 2; }
  const Value& map_key(std::size_t i) const { return items().at(2 * i); }
  const Value& map_value(std::size_t i) const { return items().at(2 * i + 1); }
  /// The value under a string or symbol key equal to `key`; nullptr when absent.
  const Value* find(std::string_view key) const;
  /// Sets (replacing) the value under a key of the given text type.
  void set(Value key, Value value);
  /// Removes every entry whose string or symbol key equals `key`.
  void erase(std::string_view key);
  const Value& descriptor() const { return items().at(0); }
  const Value& described_value() const { return items().at(1); }

  /// A short human-readable rendering, for errors and logs.
  std::string to_string() const;

  friend bool operator==(const Value& a, const Value& b);

 private:
  using Storage = std::variant<std::monostate, bool, std::uint64_t, std::int64_t, double, Uuid,
                               std::string, std::vector<Value>>;
  template <typename T>
  Value(Type type, T v) : type_(type), storage_(std::move(v)) {}

  Type type_ = Type::kNull;
  Type array_type_ = Type::kNull;
  Storage storage_;
};

/// A simple value, as application properties and filters use them (the same type as
/// `metro::sb::PropertyValue` and `metro::emulator::Scalar`).
using Simple = std::variant<std::monostate, bool, std::int64_t, double, std::string>;
/// Integers (and timestamps) as int64 (a ulong beyond it as double), floats as double, text as
/// string, a uuid as its text; anything else as monostate.
Simple to_simple(const Value& value);
/// bool, long, double or string; monostate as null.
Value from_simple(const Simple& simple);

/// The wire encoding of one value.
std::string encode(const Value& value);
/// Appends the wire encoding of one value to `out`.
void encode_into(std::string& out, const Value& value);
/// Decodes one value from the start of `bytes`; `consumed` receives its length.
/// Throws DecodeError when the bytes are not a complete value.
Value decode(std::string_view bytes, std::size_t* consumed = nullptr);

/// The canonical text form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
std::string to_string(const Uuid& uuid);
std::optional<Uuid> uuid_from_string(std::string_view text);
/// A random (version 4) UUID.
Uuid random_uuid();
/// Service Bus lock tokens travel as delivery tags in .NET GUID byte order: the first three
/// groups little-endian. This swaps between that layout and RFC order (it is its own inverse).
Uuid swap_guid_bytes(const Uuid& uuid);

}  // namespace metro::amqp
