#include "codec.hpp"

namespace metro::sb::codec {
namespace {

using amqp::Value;

/// An integer field, or nullopt when it is absent, not an integer, or out of range.
std::optional<std::int64_t> integer(const Value* v) {
  if (v == nullptr || !v->is_integer()) return std::nullopt;
  try {
    return v->as_int64();
  } catch (const amqp::DecodeError&) {
    return std::nullopt;
  }
}

std::optional<Clock::time_point> timestamp(const Value* v) {
  if (v == nullptr || v->type() != amqp::Type::kTimestamp) return std::nullopt;
  return from_ms(v->as_timestamp());
}

std::optional<std::string> text(const Value& v) {
  if (v.is_text() || v.type() == amqp::Type::kBinary) return v.as_bytes();
  if (v.type() == amqp::Type::kUuid) return amqp::to_string(v.as_uuid());
  if (v.is_integer()) {
    if (auto i = integer(&v)) return std::to_string(*i);
    return std::to_string(v.as_uint64());
  }
  return std::nullopt;
}

BodySection body_section_of(const amqp::Message& m) {
  if (!m.body_section) return BodySection::kNone;
  switch (*m.body_section) {
    case amqp::kAmqpValue:
      return BodySection::kAmqpValue;
    case amqp::kAmqpSequence:
      return BodySection::kAmqpSequence;
    default:
      return BodySection::kData;
  }
}

}  // namespace

std::int64_t to_ms(Clock::time_point t) {
  return std::chrono::duration_cast<milliseconds>(t.time_since_epoch()).count();
}

Clock::time_point from_ms(std::int64_t ms) { return Clock::time_point(milliseconds(ms)); }

Value property_map(const std::map<std::string, PropertyValue>& properties) {
  std::vector<std::pair<Value, Value>> entries;
  for (const auto& [k, v] : properties)
    entries.emplace_back(Value::string(k), amqp::from_simple(v));
  return Value::map(std::move(entries));
}

std::string encode(const Message& m) {
  amqp::Message out;
  auto opt = [](const std::optional<std::string>& s) {
    return s ? Value::string(*s) : Value::null();
  };
  out.set_property(amqp::kMessageId, opt(m.message_id));
  out.set_property(amqp::kTo, opt(m.to));
  out.set_property(amqp::kSubject, opt(m.subject));
  out.set_property(amqp::kReplyTo, opt(m.reply_to));
  out.set_property(amqp::kCorrelationId, opt(m.correlation_id));
  out.set_property(amqp::kContentType,
                   m.content_type ? Value::symbol(*m.content_type) : Value::null());
  if (!m.application_properties.empty()) {
    out.application_properties = property_map(m.application_properties);
  }
  if (m.time_to_live) {
    out.set_header_field(amqp::kDurable, Value::boolean(true));
    out.set_header_field(amqp::kTtl,
                         Value::uint(static_cast<std::uint32_t>(m.time_to_live->count())));
  }
  if (m.scheduled_enqueue_time) {
    out.message_annotations = Value::map({{Value::symbol("x-opt-scheduled-enqueue-time"),
                                           Value::timestamp(to_ms(*m.scheduled_enqueue_time))}});
  }
  out.data_sections.push_back(m.body);
  return amqp::encode_message(out);
}

ReceivedMessage decode_received(const amqp::Message& m) {
  ReceivedMessage r;
  r.body = m.body_bytes();
  r.body_section = body_section_of(m);
  r.message_id = text(m.property(amqp::kMessageId));
  r.subject = text(m.property(amqp::kSubject));
  r.correlation_id = text(m.property(amqp::kCorrelationId));
  r.content_type = text(m.property(amqp::kContentType));
  r.to = text(m.property(amqp::kTo));
  r.reply_to = text(m.property(amqp::kReplyTo));
  if (m.application_properties.type() == amqp::Type::kMap) {
    for (std::size_t i = 0; i < m.application_properties.map_size(); ++i) {
      const auto& key = m.application_properties.map_key(i);
      if (!key.is_text()) continue;
      r.application_properties[key.as_bytes()] =
          amqp::to_simple(m.application_properties.map_value(i));
    }
  }
  auto text_property = [&](const char* name) -> std::optional<std::string> {
    auto it = r.application_properties.find(name);
    if (it == r.application_properties.end()) return std::nullopt;
    if (const auto* s = std::get_if<std::string>(&it->second)) return *s;
    return std::nullopt;
  };
  r.dead_letter_reason = text_property("DeadLetterReason");
  r.dead_letter_description = text_property("DeadLetterErrorDescription");
  if (auto count = integer(&m.header_field(amqp::kDeliveryCount)); count && *count >= 0) {
    r.delivery_count = static_cast<std::uint32_t>(*count);
  }
  if (auto ttl = integer(&m.header_field(amqp::kTtl))) r.time_to_live = milliseconds(*ttl);
  const auto& ma = m.message_annotations;
  if (auto n = integer(ma.find("x-opt-sequence-number"))) r.sequence_number = *n;
  if (auto t = timestamp(ma.find("x-opt-enqueued-time"))) r.enqueued_time = *t;
  r.locked_until = timestamp(ma.find("x-opt-locked-until"));
  if (auto s = integer(ma.find("x-opt-message-state")); s && *s >= 0 && *s <= 2) {
    r.state = static_cast<MessageState>(*s);
  }
  r.scheduled_enqueue_time = timestamp(ma.find("x-opt-scheduled-enqueue-time"));
  if (const auto* v = m.delivery_annotations.find("x-opt-lock-token");
      v != nullptr && v->type() == amqp::Type::kUuid) {
    r.lock_token = amqp::to_string(v->as_uuid());
  }
  return r;
}

std::vector<ReceivedMessage> messages_of(const Value& body, bool with_locks) {
  std::vector<ReceivedMessage> out;
  const auto* list = body.find("messages");
  if (list == nullptr || list->is_null()) return out;
  for (const auto& entry : list->items()) {
    const auto* bytes = entry.find("message");
    if (bytes == nullptr) continue;
    auto m = decode_received(amqp::parse_message(bytes->as_bytes()));
    m.lock_token.clear();
    if (const auto* lock = entry.find("lock-token");
        with_locks && lock != nullptr && lock->type() == amqp::Type::kUuid) {
      m.lock_token = amqp::to_string(lock->as_uuid());
    }
    out.push_back(std::move(m));
  }
  return out;
}

std::optional<std::string> correlation_id_of(std::string_view bytes) {
  std::size_t offset = 0;
  try {
    while (offset < bytes.size()) {
      std::size_t consumed = 0;
      auto section = amqp::decode(bytes.substr(offset), &consumed);
      offset += consumed;
      if (section.type() != amqp::Type::kDescribed ||
          section.descriptor() != Value::ulong(amqp::kProperties)) {
        continue;
      }
      const auto& fields = section.described_value();
      if (fields.type() != amqp::Type::kList || fields.items().size() <= amqp::kCorrelationId) {
        return std::nullopt;
      }
      return text(fields.items()[amqp::kCorrelationId]);
    }
  } catch (const amqp::DecodeError&) {
  }
  return std::nullopt;
}

Reply reply_of(const amqp::Message& m) {
  Reply r;
  const auto& app = m.application_properties;
  // $management says statusCode; $cbs says status-code.
  const auto* code = app.find("statusCode");
  if (code == nullptr) code = app.find("status-code");
  if (auto status = integer(code)) r.status = static_cast<int>(*status);
  const auto* description = app.find("statusDescription");
  if (description == nullptr) description = app.find("status-description");
  if (description != nullptr && description->is_text()) r.description = description->as_bytes();
  const auto* condition = app.find("errorCondition");
  if (condition == nullptr) condition = app.find("error-condition");
  if (condition != nullptr && condition->is_text()) r.condition = condition->as_bytes();
  r.body = m.value_body.value_or(Value::null());
  return r;
}

Value disposition_request(const std::string& status, std::vector<Value> tokens,
                          const Value& annotations, const std::string& reason,
                          const std::string& description) {
  auto body = Value::map(
      {{Value::string("disposition-status"), Value::string(status)},
       {Value::string("lock-tokens"), Value::array(amqp::Type::kUuid, std::move(tokens))}});
  if (status == "suspended") {
    body.set(Value::string("deadletter-reason"), Value::string(reason));
    body.set(Value::string("deadletter-description"), Value::string(description));
  }
  if (annotations.type() == amqp::Type::kMap && annotations.map_size() > 0) {
    body.set(Value::string("properties-to-modify"), annotations);
  }
  return body;
}

std::string disposition_status(Disposition disposition) {
  switch (disposition) {
    case Disposition::kComplete:
      return "completed";
    case Disposition::kAbandon:
      return "abandoned";
    case Disposition::kDefer:
      return "defered";  // sic: Service Bus's spelling
    case Disposition::kDeadLetter:
      return "suspended";
  }
  return "completed";
}

Value sequence_array(const std::vector<std::int64_t>& numbers) {
  std::vector<Value> items;
  items.reserve(numbers.size());
  for (auto n : numbers) items.push_back(Value::long_(n));
  return Value::array(amqp::Type::kLong, std::move(items));
}

std::vector<RuleInfo> rules_of(const Value& body) {
  std::vector<RuleInfo> out;
  const auto* rules = body.find("rules");
  if (rules == nullptr || rules->is_null()) return out;
  for (const auto& entry : rules->items()) {
    const auto* d = entry.find("rule-description");
    if (d == nullptr || d->type() != amqp::Type::kDescribed) continue;
    const auto& fields = d->described_value().items();
    RuleInfo info;
    if (fields.size() > 2 && fields[2].is_text()) info.name = fields[2].as_bytes();
    if (!fields.empty() && fields[0].type() == amqp::Type::kDescribed &&
        fields[0].described_value().type() == amqp::Type::kList) {
      const auto& f = fields[0].described_value().items();
      if (fields[0].descriptor() == Value::ulong(0x0000001370000009ULL)) {  // correlation filter
        if (f.size() > 0 && f[0].is_text()) info.correlation_id = f[0].as_bytes();
        if (f.size() > 4 && f[4].is_text()) info.label = f[4].as_bytes();
        if (f.size() > 8 && f[8].type() == amqp::Type::kMap) {
          for (std::size_t i = 0; i < f[8].map_size(); ++i) {
            if (f[8].map_key(i).is_text()) {
              info.properties[f[8].map_key(i).as_bytes()] = amqp::to_simple(f[8].map_value(i));
            }
          }
        }
      } else if (!f.empty() && f[0].is_text()) {
        info.sql = f[0].as_bytes();
      }
    }
    out.push_back(std::move(info));
  }
  return out;
}

Value sql_rule(const std::string& name, const std::string& expression) {
  auto description =
      Value::map({{Value::string("sql-filter"),
                   Value::map({{Value::string("expression"), Value::string(expression)}})}});
  return Value::map({{Value::string("rule-name"), Value::string(name)},
                     {Value::string("rule-description"), description}});
}

Value correlation_rule(const std::string& name, const RuleInfo& filter) {
  auto opt = [](const std::optional<std::string>& v) {
    return v ? Value::string(*v) : Value::null();
  };
  auto correlation = Value::map({{Value::string("correlation-id"), opt(filter.correlation_id)},
                                 {Value::string("label"), opt(filter.label)},
                                 {Value::string("properties"), property_map(filter.properties)}});
  return Value::map({{Value::string("rule-name"), Value::string(name)},
                     {Value::string("rule-description"),
                      Value::map({{Value::string("correlation-filter"), correlation}})}});
}

}  // namespace metro::sb::codec
