#pragma once

// Subscription rule filters: true, false, correlation and a SQL subset (comparisons, arithmetic,
// AND/OR/NOT, IN, LIKE, EXISTS, IS [NOT] NULL over `sys.*` and application properties).
// Thread-safety: filters are immutable once built.

#include <cstdint>
#include <memory>
#include <string>

#include <metro/emulator/emulator.hpp>

#include "../amqp/message.hpp"

namespace metro::emulator {

class Filter {
 public:
  virtual ~Filter() = default;
  virtual bool matches(const amqp::Message& message) const = 0;
  /// The described filter value `enumerate-rules` returns.
  virtual amqp::Value describe() const = 0;
};

std::shared_ptr<const Filter> true_filter();
std::shared_ptr<const Filter> false_filter();
std::shared_ptr<const Filter> correlation_filter(CorrelationFilter filter);
/// Parses a SQL filter expression. Throws `metro::InvalidArgument` naming the problem and where.
std::shared_ptr<const Filter> sql_filter(const std::string& expression);
/// The filter a configured rule describes.
std::shared_ptr<const Filter> filter_for(const RuleOptions& rule);
/// The filter of an `add-rule` request's `rule-description` map. Throws `metro::InvalidArgument`.
std::shared_ptr<const Filter> filter_from_rule_description(const amqp::Value& description);

/// An AMQP value as a filter compares it (null for anything not simple).
Scalar to_scalar(const amqp::Value& value);
amqp::Value to_value(const Scalar& scalar);

}  // namespace metro::emulator
