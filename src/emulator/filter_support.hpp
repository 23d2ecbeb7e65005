#pragma once

// What the emulator's filters share: how they read a message's system and application
// properties, compare simple values, and describe themselves to $management.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <metro/emulator/emulator.hpp>

#include "../amqp/message.hpp"

namespace metro::emulator::detail {

// Descriptor codes of the filters in a rule description.
inline constexpr std::uint64_t kSqlFilterCode = 0x0000001370000006ULL;
inline constexpr std::uint64_t kTrueFilterCode = 0x0000001370000007ULL;
inline constexpr std::uint64_t kFalseFilterCode = 0x0000001370000008ULL;
inline constexpr std::uint64_t kCorrelationFilterCode = 0x0000001370000009ULL;

std::string lower(std::string_view s);
/// A SQL-like filter's description: the descriptor `code` over (expression, compatibility level).
amqp::Value sql_like(std::uint64_t code, const std::string& expression);
/// A property as text (strings, uuids, integers, binary); nullopt for null or anything else.
std::optional<std::string> text_of(const amqp::Value& v);
/// The `sys.*` properties a filter can read. Nullopt for an unknown name.
std::optional<Scalar> system_property(const amqp::Message& m, std::string_view name);
/// An application property by name, compared case-insensitively as Service Bus does.
const amqp::Value* user_property(const amqp::Message& m, std::string_view name);
/// Equality across integers and doubles, else of the same kind.
bool scalar_equal(const Scalar& a, const Scalar& b);

}  // namespace metro::emulator::detail
