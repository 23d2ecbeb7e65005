#pragma once

// An AMQP message as its sections. Incoming bytes are split without re-encoding the bare message
// (properties, application-properties, body), so a broker can pass it on byte for byte while it
// rebuilds header and annotations per delivery.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "value.hpp"

namespace metro::amqp {

/// Section descriptors (AMQP 1.0, part 3.2).
enum Section : std::uint64_t {
  kHeader = 0x70,
  kDeliveryAnnotations = 0x71,
  kMessageAnnotations = 0x72,
  kProperties = 0x73,
  kApplicationProperties = 0x74,
  kData = 0x75,
  kAmqpSequence = 0x76,
  kAmqpValue = 0x77,
  kFooter = 0x78,
};

/// Positions in the properties list.
enum PropertyField : std::size_t {
  kMessageId = 0, kUserId, kTo, kSubject, kReplyTo, kCorrelationId, kContentType,
  kContentEncoding, kAbsoluteExpiryTime, kCreationTime, kGroupId, kGroupSequence,
  kReplyToGroupId, kPropertyFieldCount
};

/// Positions in the header list.
enum HeaderField : std::size_t {
  kDurable = 0, kPriority, kTtl, kFirstAcquirer, kDeliveryCount, kHeaderFieldCount
};

struct Message {
  std::vector<Value> header;            ///< Header fields; empty when there was no header.
  Value delivery_annotations;           ///< Map or null.
  Value message_annotations;            ///< Map or null.
  std::vector<Value> properties;        ///< kPropertyFieldCount fields once normalised.
  Value application_properties;         ///< Map or null.
  std::string properties_raw;           ///< The properties section as received.
  std::string application_properties_raw;
  std::string body_raw;                 ///< All body sections, as received.
  std::vector<std::string> data_sections;  ///< Payloads of the data sections, in order.
  std::optional<Value> value_body;      ///< The amqp-value body, when that is the body.
  /// kData, kAmqpSequence or kAmqpValue: the kind of the (first) body section; none without one.
  std::optional<Section> body_section;

  /// A property field, or null when absent.
  const Value& property(PropertyField field) const;
  void set_property(PropertyField field, Value value);
  /// Text of a string/symbol property; nullopt otherwise.
  std::optional<std::string> property_text(PropertyField field) const;
  /// Header field or null.
  const Value& header_field(HeaderField field) const;
  void set_header_field(HeaderField field, Value value);

  /// The body as bytes: the data sections joined, an amqp-value string or binary, else empty.
  std::string body_bytes() const;
};

/// Splits an encoded message into its sections. Throws DecodeError on bytes that are not a
/// sequence of sections.
Message parse_message(std::string_view bytes);

/// True when every section of `bytes` parses and the first is a message section: the shape of
/// an inner message of a batch (message-format 0x80013700, one encoded message per data section).
bool looks_like_encoded_message(std::string_view bytes);
/// The message in `bytes` when they look like an encoded message (as above), else nullopt: the
/// check and the parse in one pass.
std::optional<Message> parse_encoded_message(std::string_view bytes);

/// Encodes header, annotations and the bare message. Properties and application-properties are
/// taken from the raw copies when present and `reencode_*` is false, else from the fields.
std::string encode_message(const Message& message, bool reencode_properties = false,
                           bool reencode_application_properties = false);

/// The properties section encoded from the fields (empty without properties): what
/// `properties_raw` should hold after a field was set.
std::string encode_properties(const Message& message);

/// An annotation a broker adds to the ones a message carries.
struct Annotation {
  std::string_view key;  ///< A symbol.
  Value value;
};

/// Encodes `message` as it goes out to a receiver: `header` instead of the message's header,
/// its delivery and message annotations with `delivery_annotations` / `message_annotations`
/// added (replacing entries of the same key), then the bare message as `encode_message` does.
/// Nothing of the message is copied on the way.
std::string encode_delivery(const Message& message, std::span<const Value> header,
                            std::span<const Annotation> delivery_annotations,
                            std::span<const Annotation> message_annotations,
                            bool reencode_application_properties = false);

/// A message with an amqp-value body and the given properties / application-properties, as
/// request-response exchanges ($cbs, $management) use.
std::string encode_value_message(const std::vector<Value>& properties, const Value& app_properties,
                                 const Value& body);

/// Wraps a value as a section.
std::string encode_section(Section section, const Value& value);

}  // namespace metro::amqp
