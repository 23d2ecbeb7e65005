#include "management.hpp"

#include "filter.hpp"

namespace metro::emulator {
namespace {

using amqp::Type;
using amqp::Value;

ManagementReply ok(Value body = Value::null()) { return {200, "OK", "", std::move(body)}; }

ManagementReply fail(const Failure& f) { return {f.status, f.description, f.condition, Value::null()}; }

ManagementReply bad_request(const std::string& why) {
  return {400, why, "com.microsoft:argument-error", Value::null()};
}

const Value& required(const Value& body, std::string_view key) {
  const auto* v = body.find(key);
  if (v == nullptr || v->is_null()) {
    throw InvalidArgument("the request has no '" + std::string(key) + "'");
  }
  return *v;
}

std::vector<std::int64_t> sequence_numbers(const Value& body) {
  const auto& v = required(body, "sequence-numbers");
  if (v.type() != Type::kArray && v.type() != Type::kList) {
    throw InvalidArgument("'sequence-numbers' must be an array of long");
  }
  std::vector<std::int64_t> out;
  for (const auto& item : v.items()) out.push_back(item.as_int64());
  return out;
}

std::vector<amqp::Uuid> lock_tokens(const Value& body) {
  const auto& v = required(body, "lock-tokens");
  if (v.type() != Type::kArray && v.type() != Type::kList) {
    throw InvalidArgument("'lock-tokens' must be an array of uuid");
  }
  std::vector<amqp::Uuid> out;
  for (const auto& item : v.items()) out.push_back(item.as_uuid());
  return out;
}

std::string optional_text(const Value& body, std::string_view key) {
  const auto* v = body.find(key);
  if (v == nullptr || v->is_null()) return {};
  return v->as_bytes();
}

Value message_list(const std::vector<Outgoing>& messages, bool with_locks) {
  std::vector<Value> list;
  for (const auto& m : messages) {
    std::vector<std::pair<Value, Value>> entry;
    entry.emplace_back(Value::string("message"), Value::binary(m.bytes));
    if (with_locks && m.lock) entry.emplace_back(Value::string("lock-token"), Value::uuid(*m.lock));
    list.push_back(Value::map(std::move(entry)));
  }
  return Value::map({{Value::string("messages"), Value::list(std::move(list))}});
}

ManagementReply peek(Broker& broker, Entity& entity, const Value& body, TimeMs now) {
  auto from = required(body, "from-sequence-number").as_int64();
  auto count = required(body, "message-count").as_int64();
  if (count <= 0) throw InvalidArgument("'message-count' must be positive");
  auto messages = broker.peek(entity, from, static_cast<std::size_t>(count), now);
  if (messages.empty()) return {204, "No messages to peek", "", Value::null()};
  return ok(message_list(messages, false));
}

ManagementReply receive_by_sequence_number(Broker& broker, Entity& entity, const Value& body,
                                           TimeMs now) {
  auto numbers = sequence_numbers(body);
  bool peek_lock = true;
  if (const auto* mode = body.find("receiver-settle-mode"); mode != nullptr && !mode->is_null()) {
    peek_lock = mode->as_uint64() != 0;
  }
  std::optional<Failure> error;
  auto messages = broker.receive_deferred(entity, numbers, peek_lock, now, error);
  if (error) return fail(*error);
  return ok(message_list(messages, peek_lock));
}

ManagementReply update_disposition(Broker& broker, Entity& entity, const Value& body, TimeMs now) {
  auto status = required(body, "disposition-status").as_bytes();
  auto tokens = lock_tokens(body);
  Value properties = Value::null();
  if (const auto* p = body.find("properties-to-modify"); p != nullptr) properties = *p;
  for (const auto& token : tokens) {
    std::optional<Failure> error;
    if (status == "completed") {
      error = broker.complete(entity, token, now);
    } else if (status == "abandoned") {
      error = broker.abandon(entity, token, properties, now);
    } else if (status == "defered" || status == "deferred") {
      error = broker.defer(entity, token, properties, now);
    } else if (status == "suspended") {
      error = broker.dead_letter(entity, token, optional_text(body, "deadletter-reason"),
                                 optional_text(body, "deadletter-description"), properties, now);
    } else {
      return bad_request("unknown disposition-status '" + status +
                         "' (expected completed, abandoned, defered or suspended)");
    }
    if (error) return fail(*error);
  }
  return ok();
}

ManagementReply renew_lock(Broker& broker, Entity& entity, const Value& body, TimeMs now) {
  std::optional<Failure> error;
  auto expirations = broker.renew_locks(entity, lock_tokens(body), now, error);
  if (error) return fail(*error);
  std::vector<Value> times;
  for (auto t : expirations) times.push_back(Value::timestamp(t));
  return ok(Value::map(
      {{Value::string("expirations"), Value::array(Type::kTimestamp, std::move(times))}}));
}

ManagementReply schedule(Broker& broker, Entity& entity, const Value& body, TimeMs now) {
  const auto& list = required(body, "messages");
  std::vector<amqp::Message> messages;
  for (const auto& entry : list.items()) {
    const auto& bytes = required(entry, "message").as_bytes();
    messages.push_back(amqp::parse_message(bytes));
  }
  auto numbers = broker.schedule(entity, std::move(messages), now);
  std::vector<Value> out;
  for (auto n : numbers) out.push_back(Value::long_(n));
  return ok(Value::map(
      {{Value::string("sequence-numbers"), Value::array(Type::kLong, std::move(out))}}));
}

ManagementReply add_rule(Broker& broker, Entity& entity, const Value& body, TimeMs now) {
  auto name = required(body, "rule-name").as_bytes();
  auto filter = filter_from_rule_description(required(body, "rule-description"));
  if (auto error = broker.add_rule(entity, name, std::move(filter), now)) return fail(*error);
  return ok();
}

ManagementReply enumerate_rules(Broker& broker, Entity& entity, const Value& body) {
  std::int64_t top = 1 << 30;
  std::int64_t skip = 0;
  if (const auto* v = body.find("top"); v != nullptr && !v->is_null()) top = v->as_int64();
  if (const auto* v = body.find("skip"); v != nullptr && !v->is_null()) skip = v->as_int64();
  std::vector<Value> rules;
  std::int64_t index = 0;
  for (const auto& rule : broker.rules(entity)) {
    if (index++ < skip) continue;
    if (static_cast<std::int64_t>(rules.size()) >= top) break;
    auto description = Value::described(
        Value::ulong(0x0000013700000004ULL),
        Value::list({rule.filter->describe(),
                     Value::described(Value::ulong(0x0000013700000005ULL), Value::list({})),
                     Value::string(rule.name), Value::timestamp(rule.created)}));
    rules.push_back(Value::map({{Value::string("rule-description"), std::move(description)}}));
  }
  if (rules.empty()) return {204, "No rules", "", Value::null()};
  return ok(Value::map({{Value::string("rules"), Value::list(std::move(rules))}}));
}

}  // namespace

ManagementReply handle_management(Broker& broker, Entity& entity, const std::string& operation,
                                  const Value& body, TimeMs now) {
  try {
    if (body.type() != Type::kMap && !body.is_null()) {
      return bad_request("the request body must be an amqp-value map");
    }
    const Value empty = Value::map({});
    const Value& request = body.is_null() ? empty : body;
    bool subscription = entity.kind() == Entity::Kind::kSubscription;
    if (operation == "com.microsoft:peek-message") return peek(broker, entity, request, now);
    if (operation == "com.microsoft:receive-by-sequence-number") {
      return receive_by_sequence_number(broker, entity, request, now);
    }
    if (operation == "com.microsoft:update-disposition") {
      return update_disposition(broker, entity, request, now);
    }
    if (operation == "com.microsoft:renew-lock") return renew_lock(broker, entity, request, now);
    if (operation == "com.microsoft:schedule-message" ||
        operation == "com.microsoft:cancel-scheduled-message") {
      if (entity.kind() != Entity::Kind::kQueue && entity.kind() != Entity::Kind::kTopic) {
        return bad_request("messages can be scheduled on a queue or topic only");
      }
      if (operation == "com.microsoft:schedule-message") {
        return schedule(broker, entity, request, now);
      }
      broker.cancel_scheduled(entity, sequence_numbers(request));
      return ok();
    }
    if (operation == "com.microsoft:add-rule" || operation == "com.microsoft:remove-rule" ||
        operation == "com.microsoft:enumerate-rules") {
      if (!subscription) return bad_request("rules belong to subscriptions");
      if (operation == "com.microsoft:add-rule") return add_rule(broker, entity, request, now);
      if (operation == "com.microsoft:remove-rule") {
        if (auto error = broker.remove_rule(entity, required(request, "rule-name").as_bytes())) {
          return fail(*error);
        }
        return ok();
      }
      return enumerate_rules(broker, entity, request);
    }
    return {501, "The operation '" + operation + "' is not supported by the metro emulator.",
            "amqp:not-implemented", Value::null()};
  } catch (const Error& e) {
    return bad_request(e.what());
  }
}

}  // namespace metro::emulator
