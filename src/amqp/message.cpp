#include "message.hpp"

#include <algorithm>

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

namespace {

/// A data section in its usual form (`00 53 75` then vbin8 or vbin32) starting at `offset`: its
/// payload and length, read without building a value. Nullopt for anything else.
std::optional<std::pair<std::string_view, std::size_t>> plain_data_section(std::string_view bytes,
                                                                           std::size_t offset) {
  auto rest = bytes.substr(offset);
  if (rest.size() < 5 || rest[0] != 0x00 || rest[1] != 0x53 || rest[2] != 0x75) return std::nullopt;
  auto code = static_cast<unsigned char>(rest[3]);
  std::size_t header = 0;
  std::size_t size = 0;
  if (code == 0xa0) {
    header = 5;
    size = static_cast<unsigned char>(rest[4]);
  } else if (code == 0xb0 && rest.size() >= 8) {
    header = 8;
    for (int i = 4; i < 8; ++i) size = (size << 8) | static_cast<unsigned char>(rest[i]);
  } else {
    return std::nullopt;
  }
  if (rest.size() - header < size) return std::nullopt;  // cut short: the decoder says why
  return std::make_pair(rest.substr(header, size), header + size);
}

}  // namespace

Message parse_message(std::string_view bytes) {
  Message m;
  std::size_t offset = 0;
  int last = -1;
  while (offset < bytes.size()) {
    if (auto data = plain_data_section(bytes, offset)) {
      // The common body: no value tree for it, one copy of its bytes.
      last = kData;
      if (!m.body_section) m.body_section = kData;
      m.data_sections.emplace_back(data->first);
      m.body_raw.append(bytes.substr(offset, data->second));
      offset += data->second;
      continue;
    }
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
    // The section is this function's own: its parts are moved out, not copied.
    auto& v = section.items()[1];
    switch (code) {
      case kHeader:
        if (v.type() != Type::kList) throw DecodeError("the header is not a list");
        m.header = std::move(v.items());
        break;
      case kDeliveryAnnotations:
        m.delivery_annotations = std::move(v);
        break;
      case kMessageAnnotations:
        m.message_annotations = std::move(v);
        break;
      case kProperties:
        if (v.type() != Type::kList) throw DecodeError("the properties section is not a list");
        m.properties = std::move(v.items());
        m.properties_raw = std::string(raw);
        break;
      case kApplicationProperties:
        if (v.type() != Type::kMap && !v.is_null()) {
          throw DecodeError("application-properties is not a map");
        }
        m.application_properties = std::move(v);
        m.application_properties_raw = std::string(raw);
        break;
      case kData:
        if (v.type() != Type::kBinary) throw DecodeError("a data section does not hold binary");
        if (!m.body_section) m.body_section = kData;
        m.data_sections.push_back(std::move(v.as_bytes()));
        m.body_raw.append(raw);
        break;
      case kAmqpSequence:
        if (!m.body_section) m.body_section = kAmqpSequence;
        m.body_raw.append(raw);
        break;
      case kAmqpValue:
        if (!m.body_section) m.body_section = kAmqpValue;
        m.value_body = std::move(v);
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

std::optional<Message> parse_encoded_message(std::string_view bytes) {
  if (bytes.size() < 4 || bytes[0] != 0x00 || static_cast<unsigned char>(bytes[1]) != 0x53) {
    return std::nullopt;
  }
  auto code = static_cast<unsigned char>(bytes[2]);
  if (code < kHeader || code > kAmqpValue) return std::nullopt;
  try {
    return parse_message(bytes);
  } catch (const DecodeError&) {
    return std::nullopt;
  }
}

bool looks_like_encoded_message(std::string_view bytes) {
  return parse_encoded_message(bytes).has_value();
}

namespace {

void put_section_descriptor(std::string& out, Section section) {
  out.push_back(0x00);
  out.push_back(0x53);
  out.push_back(static_cast<char>(section));
}

void put_u32(std::string& out, std::size_t at, std::size_t v) {
  for (int i = 0; i < 4; ++i) {
    out[at + static_cast<std::size_t>(i)] = static_cast<char>((v >> (24 - 8 * i)) & 0xff);
  }
}

/// A list32 or map32 whose elements `write` appends; its size and count are filled in after.
template <typename Write>
void put_compound(std::string& out, std::uint8_t code32, Write write) {
  out.push_back(static_cast<char>(code32));
  auto at = out.size();
  out.append(8, '\0');
  auto count = write();
  put_u32(out, at, out.size() - at - 4);
  put_u32(out, at + 4, count);
}

void put_symbol(std::string& out, std::string_view s) {
  if (s.size() < 256) {
    out.push_back(static_cast<char>(0xa3));
    out.push_back(static_cast<char>(s.size()));
  } else {
    out.push_back(static_cast<char>(0xb3));
    out.append(4, '\0');
    put_u32(out, out.size() - 4, s.size());
  }
  out.append(s);
}

/// An annotations section: the entries of `stored` (a map or null) whose keys `added` does not
/// name, then `added`. Nothing when both are empty.
void put_annotations(std::string& out, Section section, const Value& stored,
                     std::span<const Annotation> added) {
  bool has_stored = stored.type() == Type::kMap && stored.map_size() > 0;
  if (!has_stored && added.empty()) return;
  put_section_descriptor(out, section);
  put_compound(out, 0xd1, [&] {
    std::size_t count = 0;
    if (has_stored) {
      const auto& flat = stored.items();
      for (std::size_t i = 0; i + 1 < flat.size(); i += 2) {
        if (flat[i].is_text() && std::any_of(added.begin(), added.end(), [&](const Annotation& a) {
              return a.key == flat[i].as_bytes();
            })) {
          continue;
        }
        encode_into(out, flat[i]);
        encode_into(out, flat[i + 1]);
        count += 2;
      }
    }
    for (const auto& a : added) {
      put_symbol(out, a.key);
      encode_into(out, a.value);
      count += 2;
    }
    return count;
  });
}

void put_properties(std::string& out, const std::vector<Value>& properties) {
  // Trailing nulls may be omitted from a list; keep it short, as every encoder does.
  auto n = properties.size();
  while (n > 0 && properties[n - 1].is_null()) --n;
  put_section_descriptor(out, kProperties);
  if (n == 0) {
    out.push_back(0x45);  // list0
    return;
  }
  put_compound(out, 0xd0, [&] {
    for (std::size_t i = 0; i < n; ++i) encode_into(out, properties[i]);
    return n;
  });
}

/// Properties, application-properties and body: the bare message.
void put_bare(std::string& out, const Message& m, bool reencode_properties,
              bool reencode_application_properties) {
  if (!m.properties_raw.empty() && !reencode_properties) {
    out += m.properties_raw;
  } else if (!m.properties.empty()) {
    put_properties(out, m.properties);
  }
  if (!m.application_properties_raw.empty() && !reencode_application_properties) {
    out += m.application_properties_raw;
  } else if (m.application_properties.type() == Type::kMap &&
             m.application_properties.map_size() > 0) {
    put_section_descriptor(out, kApplicationProperties);
    encode_into(out, m.application_properties);
  }
  if (!m.body_raw.empty()) {
    out += m.body_raw;
  } else if (m.value_body) {
    put_section_descriptor(out, kAmqpValue);
    encode_into(out, *m.value_body);
  } else {
    for (const auto& d : m.data_sections) {
      put_section_descriptor(out, kData);
      encode_into(out, Value::binary(d));
    }
  }
}

std::size_t bare_size_hint(const Message& m) {
  return m.properties_raw.size() + m.application_properties_raw.size() + m.body_raw.size() + 64;
}

}  // namespace

std::string encode_section(Section section, const Value& value) {
  std::string out;
  put_section_descriptor(out, section);
  encode_into(out, value);
  return out;
}

std::string encode_properties(const Message& message) {
  std::string out;
  if (!message.properties.empty()) put_properties(out, message.properties);
  return out;
}

std::string encode_message(const Message& m, bool reencode_properties,
                           bool reencode_application_properties) {
  std::string out;
  out.reserve(bare_size_hint(m));
  if (!m.header.empty()) {
    put_section_descriptor(out, kHeader);
    put_compound(out, 0xd0, [&] {
      for (const auto& field : m.header) encode_into(out, field);
      return m.header.size();
    });
  }
  put_annotations(out, kDeliveryAnnotations, m.delivery_annotations, {});
  put_annotations(out, kMessageAnnotations, m.message_annotations, {});
  put_bare(out, m, reencode_properties, reencode_application_properties);
  return out;
}

std::string encode_delivery(const Message& m, std::span<const Value> header,
                            std::span<const Annotation> delivery_annotations,
                            std::span<const Annotation> message_annotations,
                            bool reencode_application_properties) {
  std::string out;
  out.reserve(bare_size_hint(m) + 160);
  if (!header.empty()) {
    put_section_descriptor(out, kHeader);
    put_compound(out, 0xd0, [&] {
      for (const auto& field : header) encode_into(out, field);
      return header.size();
    });
  }
  put_annotations(out, kDeliveryAnnotations, m.delivery_annotations, delivery_annotations);
  put_annotations(out, kMessageAnnotations, m.message_annotations, message_annotations);
  put_bare(out, m, false, reencode_application_properties);
  return out;
}

std::string encode_value_message(const std::vector<Value>& properties, const Value& app_properties,
                                 const Value& body) {
  std::string out;
  if (!properties.empty()) put_properties(out, properties);
  if (app_properties.type() == Type::kMap && app_properties.map_size() > 0) {
    put_section_descriptor(out, kApplicationProperties);
    encode_into(out, app_properties);
  }
  put_section_descriptor(out, kAmqpValue);
  encode_into(out, body);
  return out;
}

}  // namespace metro::amqp
