// Subscription filters: true, false and correlation filters, what a filter reads of a message
// (filter_support.hpp), and the rule descriptions of $management. The SQL filter language is
// sql_filter.cpp.

#include "filter.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <optional>

#include "filter_support.hpp"

namespace metro::emulator {
namespace detail {

using amqp::Value;

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

Value sql_like(std::uint64_t code, const std::string& expression) {
  return Value::described(Value::ulong(code),
                          Value::list({Value::string(expression), Value::int_(20)}));
}

std::optional<std::string> text_of(const Value& v) {
  if (v.is_null()) return std::nullopt;
  if (v.is_text()) return v.as_bytes();
  if (v.type() == amqp::Type::kUuid) return amqp::to_string(v.as_uuid());
  if (v.is_integer()) return std::to_string(v.as_int64());
  if (v.type() == amqp::Type::kBinary) return v.as_bytes();
  return std::nullopt;
}

std::optional<Scalar> system_property(const amqp::Message& m, std::string_view name) {
  auto text = [&](amqp::PropertyField f) -> Scalar {
    auto t = text_of(m.property(f));
    if (t) return *t;
    return std::monostate{};
  };
  auto n = lower(name);
  if (n == "messageid") return text(amqp::kMessageId);
  if (n == "correlationid") return text(amqp::kCorrelationId);
  if (n == "to") return text(amqp::kTo);
  if (n == "replyto") return text(amqp::kReplyTo);
  if (n == "label" || n == "subject") return text(amqp::kSubject);
  if (n == "sessionid") return text(amqp::kGroupId);
  if (n == "replytosessionid") return text(amqp::kReplyToGroupId);
  if (n == "contenttype") return text(amqp::kContentType);
  return std::nullopt;
}

const Value* user_property(const amqp::Message& m, std::string_view name) {
  if (m.application_properties.type() != amqp::Type::kMap) return nullptr;
  if (const auto* v = m.application_properties.find(name)) return v;
  auto wanted = lower(name);  // Service Bus property names compare case-insensitively.
  for (std::size_t i = 0; i < m.application_properties.map_size(); ++i) {
    const auto& k = m.application_properties.map_key(i);
    if (k.is_text() && lower(k.as_bytes()) == wanted) return &m.application_properties.map_value(i);
  }
  return nullptr;
}

bool scalar_equal(const Scalar& a, const Scalar& b) {
  if (a.index() == b.index()) return a == b;
  auto number = [](const Scalar& s) -> std::optional<double> {
    if (auto* i = std::get_if<std::int64_t>(&s)) return static_cast<double>(*i);
    if (auto* d = std::get_if<double>(&s)) return *d;
    return std::nullopt;
  };
  auto x = number(a);
  auto y = number(b);
  return x && y && *x == *y;
}

}  // namespace detail

namespace {

using amqp::Value;
using namespace detail;

class ConstantFilter : public Filter {
 public:
  explicit ConstantFilter(bool value) : value_(value) {}
  bool matches(const amqp::Message& /*message*/) const override { return value_; }
  Value describe() const override {
    return value_ ? sql_like(kTrueFilterCode, "1=1") : sql_like(kFalseFilterCode, "1=0");
  }

 private:
  bool value_;
};

class CorrelationFilterImpl : public Filter {
 public:
  explicit CorrelationFilterImpl(CorrelationFilter f) : f_(std::move(f)) {}

  bool matches(const amqp::Message& m) const override {
    auto check = [&](const std::optional<std::string>& want, amqp::PropertyField field) {
      return !want || text_of(m.property(field)) == *want;
    };
    if (!check(f_.correlation_id, amqp::kCorrelationId) ||
        !check(f_.message_id, amqp::kMessageId) || !check(f_.to, amqp::kTo) ||
        !check(f_.reply_to, amqp::kReplyTo) || !check(f_.label, amqp::kSubject) ||
        !check(f_.session_id, amqp::kGroupId) ||
        !check(f_.reply_to_session_id, amqp::kReplyToGroupId) ||
        !check(f_.content_type, amqp::kContentType)) {
      return false;
    }
    for (const auto& [name, want] : f_.properties) {
      const auto* v = user_property(m, name);
      if (v == nullptr || !scalar_equal(to_scalar(*v), want)) return false;
    }
    return true;
  }

  Value describe() const override {
    auto opt = [](const std::optional<std::string>& s) {
      return s ? Value::string(*s) : Value::null();
    };
    std::vector<std::pair<Value, Value>> props;
    for (const auto& [k, v] : f_.properties) props.emplace_back(Value::string(k), to_value(v));
    return Value::described(
        Value::ulong(kCorrelationFilterCode),
        Value::list({opt(f_.correlation_id), opt(f_.message_id), opt(f_.to), opt(f_.reply_to),
                     opt(f_.label), opt(f_.session_id), opt(f_.reply_to_session_id),
                     opt(f_.content_type), Value::map(std::move(props))}));
  }

 private:
  CorrelationFilter f_;
};

std::optional<std::string> optional_text(const Value& map, std::string_view key) {
  const auto* v = map.find(key);
  if (v == nullptr || v->is_null()) return std::nullopt;
  if (!v->is_text()) throw InvalidArgument(std::string(key) + " must be a string");
  return v->as_bytes();
}

}  // namespace

Scalar to_scalar(const Value& v) { return amqp::to_simple(v); }

Value to_value(const Scalar& s) { return amqp::from_simple(s); }

std::shared_ptr<const Filter> true_filter() { return std::make_shared<ConstantFilter>(true); }
std::shared_ptr<const Filter> false_filter() { return std::make_shared<ConstantFilter>(false); }

std::shared_ptr<const Filter> correlation_filter(CorrelationFilter filter) {
  return std::make_shared<CorrelationFilterImpl>(std::move(filter));
}

std::shared_ptr<const Filter> filter_for(const RuleOptions& rule) {
  if (rule.sql) return sql_filter(*rule.sql);
  if (rule.correlation) return correlation_filter(*rule.correlation);
  return true_filter();
}

std::shared_ptr<const Filter> filter_from_rule_description(const Value& description) {
  if (description.type() != amqp::Type::kMap) {
    throw InvalidArgument("rule-description must be a map");
  }
  const auto* sql = description.find("sql-filter");
  const auto* correlation = description.find("correlation-filter");
  if (sql != nullptr && !sql->is_null()) {
    auto expression = optional_text(*sql, "expression");
    if (!expression) throw InvalidArgument("sql-filter needs an expression");
    return sql_filter(*expression);
  }
  if (correlation != nullptr && !correlation->is_null()) {
    if (correlation->type() != amqp::Type::kMap) {
      throw InvalidArgument("correlation-filter must be a map");
    }
    CorrelationFilter f;
    f.correlation_id = optional_text(*correlation, "correlation-id");
    f.message_id = optional_text(*correlation, "message-id");
    f.to = optional_text(*correlation, "to");
    f.reply_to = optional_text(*correlation, "reply-to");
    f.label = optional_text(*correlation, "label");
    f.session_id = optional_text(*correlation, "session-id");
    f.reply_to_session_id = optional_text(*correlation, "reply-to-session-id");
    f.content_type = optional_text(*correlation, "content-type");
    if (const auto* props = correlation->find("properties");
        props != nullptr && props->type() == amqp::Type::kMap) {
      for (std::size_t i = 0; i < props->map_size(); ++i) {
        if (props->map_key(i).is_text()) {
          f.properties[props->map_key(i).as_bytes()] = to_scalar(props->map_value(i));
        }
      }
    }
    return correlation_filter(std::move(f));
  }
  return true_filter();
}

}  // namespace metro::emulator
