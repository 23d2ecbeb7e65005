#pragma once

// The client's pure conversions: metro::sb messages to and from AMQP, and the bodies of
// $management requests and replies. No Proton objects, no threads: unit-tested and fuzzed.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <metro/sb/client.hpp>

#include "../amqp/message.hpp"

namespace metro::sb::codec {

std::int64_t to_ms(Clock::time_point t);
Clock::time_point from_ms(std::int64_t ms);

/// Application properties as an AMQP map with string keys.
amqp::Value property_map(const std::map<std::string, PropertyValue>& properties);

/// A message to send: one data section with the body, properties, TTL, scheduled time.
std::string encode(const Message& message);

/// What a received (or peeked, or fetched) message says about itself. Never throws: fields of
/// unexpected types are left out.
ReceivedMessage decode_received(const amqp::Message& message);

/// The messages of a receive-by-sequence-number or peek-message reply; with `with_locks`, their
/// lock tokens. Throws amqp::DecodeError when an entry is not a message.
std::vector<ReceivedMessage> messages_of(const amqp::Value& body, bool with_locks);

/// The correlation id of an encoded message whose sections do not all decode: the sections before
/// the first bad one are read. Nullopt when the properties are not among them.
std::optional<std::string> correlation_id_of(std::string_view bytes);

/// A $management reply: its status, description, error condition and body.
struct Reply {
  int status = -1;
  std::string description;
  std::string condition;
  amqp::Value body;
};
Reply reply_of(const amqp::Message& message);

/// `update-disposition` for the given lock tokens.
amqp::Value disposition_request(const std::string& status, std::vector<amqp::Value> lock_tokens,
                                const amqp::Value& properties_to_modify, const std::string& reason,
                                const std::string& description);
/// `completed`, `abandoned`, `defered`, `suspended`.
std::string disposition_status(Disposition disposition);
/// An AMQP array of longs.
amqp::Value sequence_array(const std::vector<std::int64_t>& numbers);
/// The rules of an `enumerate-rules` reply.
std::vector<RuleInfo> rules_of(const amqp::Value& body);
/// `add-rule` bodies.
amqp::Value sql_rule(const std::string& name, const std::string& expression);
amqp::Value correlation_rule(const std::string& name, const RuleInfo& filter);

}  // namespace metro::sb::codec
