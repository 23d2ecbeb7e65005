#include "message.hpp"

namespace metro::amqp {
namespace {

const Value kNull;

}  // namespace

const Value& Message::property(PropertyField field) const {
  return field < properties.size() ? properties[field] : kNull;
}

void Message::set_property(PropertyField field, Value value) {
  if (properties.size() < kPropertyFieldCount) properties.resize(kPropertyFieldCount);
  properties[field] = std::move(value);
}

std::optional<std::string> Message::property_text(PropertyField field) const {
  const auto& v = property(field);
  if (v.is_text()) return v.as_bytes();
  return std::nullopt;
}

const Value& Message::header_field(HeaderField field) const {
  return field < header.size() ? header[field] : kNull;
}

void Message::set_header_field(HeaderField field, Value value) {
  if (header.size() < kHeaderFieldCount) header.resize(kHeaderFieldCount);
  header[field] = std::move(value);
}

std::string Message::body_bytes() const {
  if (!data_sections.empty()) {
    std::string out;
    for (const auto& d : data_sections) out += d;
    return out;
  }
  if (value_body && (value_body->is_text() || value_body->type() == Type::kBinary)) {
    return value_body->as_bytes();
  }
  return {};
}

Message parse_message(std::string_view bytes) {
  Message m;
  std::size_t offset = 0;
  int last = -1;
  while (offset < bytes.size()) {
    std::size_t consumed = 0;
    auto section = decode(bytes.substr(offset), &consumed);
    if (section.type() != Type::kDescribed || !section.descriptor().is_integer()) {
      throw DecodeError("a message section must be a described value with a numeric descriptor");
    }
    auto code = section.descriptor().as_uint64();
    if (code < kHeader || code > kFooter) {
      throw DecodeError("unknown message section 0x" + std::to_string(code));
    }
    if (static_cast<int>(code) < last && code < kData) {
      throw DecodeError("message sections out of order");
    }
    last = static_cast<int>(code);
    auto raw = bytes.substr(offset, consumed);
    const auto& v = section.described_value();
    switch (code) {
      case kHeader:
        if (v.type() != Type::kList) throw DecodeError("the header is not a list");
        m.header = v.items();
        break;
      case kDeliveryAnnotations:
        m.delivery_annotations = v;
        break;
      case kMessageAnnotations:
        m.message_annotations = v;
        break;
      case kProperties:
        if (v.type() != Type::kList) throw DecodeError("the properties section is not a list");
        m.properties = v.items();
        m.properties_raw = std::string(raw);
        break;
      case kApplicationProperties:
        if (v.type() != Type::kMap && !v.is_null()) {
          throw DecodeError("application-properties is not a map");
        }
        m.application_properties = v;
        m.application_properties_raw = std::string(raw);
        break;
      case kData:
        if (v.type() != Type::kBinary) throw DecodeError("a data section does not hold binary");
        if (!m.body_section) m.body_section = kData;
        m.data_sections.push_back(v.as_bytes());
        m.body_raw.append(raw);
        break;
      case kAmqpSequence:
        if (!m.body_section) m.body_section = kAmqpSequence;
        m.body_raw.append(raw);
        break;
      case kAmqpValue:
        if (!m.body_section) m.body_section = kAmqpValue;
        m.value_body = v;
        m.body_raw.append(raw);
        break;
      case kFooter:
        break;  // Not part of the bare message; a broker does not pass it on.
    }
    offset += consumed;
  }
  if (m.properties.size() < kPropertyFieldCount && !m.properties.empty()) {
    m.properties.resize(kPropertyFieldCount);
  }
  return m;
}

bool looks_like_encoded_message(std::string_view bytes) {
  if (bytes.size() < 4 || bytes[0] != 0x00 || static_cast<unsigned char>(bytes[1]) != 0x53) {
    return false;
  }
  auto code = static_cast<unsigned char>(bytes[2]);
  if (code < kHeader || code > kAmqpValue) return false;
  try {
    parse_message(bytes);
    return true;
  } catch (const DecodeError&) {
    return false;
  }
}

std::string encode_section(Section section, const Value& value) {
  return encode(Value::described(Value::ulong(section), value));
}

std::string encode_message(const Message& m, bool reencode_properties,
                           bool reencode_application_properties) {
  std::string out;
  if (!m.header.empty()) out += encode_section(kHeader, Value::list(m.header));
  if (m.delivery_annotations.type() == Type::kMap && m.delivery_annotations.map_size() > 0) {
    out += encode_section(kDeliveryAnnotations, m.delivery_annotations);
  }
  if (m.message_annotations.type() == Type::kMap && m.message_annotations.map_size() > 0) {
    out += encode_section(kMessageAnnotations, m.message_annotations);
  }
  if (!m.properties_raw.empty() && !reencode_properties) {
    out += m.properties_raw;
  } else if (!m.properties.empty()) {
    // Trailing nulls may be omitted from a list; keep it short, as every encoder does.
    auto fields = m.properties;
    while (!fields.empty() && fields.back().is_null()) fields.pop_back();
    out += encode_section(kProperties, Value::list(fields));
  }
  if (!m.application_properties_raw.empty() && !reencode_application_properties) {
    out += m.application_properties_raw;
  } else if (m.application_properties.type() == Type::kMap &&
             m.application_properties.map_size() > 0) {
    out += encode_section(kApplicationProperties, m.application_properties);
  }
  if (!m.body_raw.empty()) {
    out += m.body_raw;
  } else if (m.value_body) {
    out += encode_section(kAmqpValue, *m.value_body);
  } else {
    for (const auto& d : m.data_sections) out += encode_section(kData, Value::binary(d));
  }
  return out;
}

std::string encode_value_message(const std::vector<Value>& properties, const Value& app_properties,
                                 const Value& body) {
  Message m;
  m.properties = properties;
  m.application_properties = app_properties;
  m.value_body = body;
  return encode_message(m);
}

}  // namespace metro::amqp
