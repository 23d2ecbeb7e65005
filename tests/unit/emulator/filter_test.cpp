#include "../../../src/emulator/filter.hpp"

#include <gtest/gtest.h>

namespace metro::emulator {
namespace {

using amqp::Value;

amqp::Message order() {
  amqp::Message m;
  m.set_property(amqp::kSubject, Value::string("order/42"));
  m.set_property(amqp::kCorrelationId, Value::string("c-1"));
  m.set_property(amqp::kContentType, Value::symbol("application/json"));
  m.application_properties = Value::map({{Value::string("quantity"), Value::uint(12)},
                                         {Value::string("colour"), Value::string("red")},
                                         {Value::string("price"), Value::double_(9.5)},
                                         {Value::string("rush"), Value::boolean(true)}});
  return m;
}

struct Case {
  const char* expression;
  bool matches;
};

class Sql : public ::testing::TestWithParam<Case> {};

TEST_P(Sql, Evaluates) {
  EXPECT_EQ(sql_filter(GetParam().expression)->matches(order()), GetParam().matches)
      << GetParam().expression;
}

INSTANTIATE_TEST_SUITE_P(
    Subset, Sql,
    ::testing::Values(
        Case{"1=1", true}, Case{"1=0", false}, Case{"quantity > 10", true},
        Case{"quantity >= 13", false}, Case{"quantity * 2 + 1 = 25", true},
        Case{"price < 10.0 AND colour = 'red'", true}, Case{"colour = 'blue' OR rush = TRUE", true},
        Case{"NOT colour = 'red'", false}, Case{"colour <> 'red'", false},
        Case{"colour IN ('blue', 'red')", true}, Case{"colour NOT IN ('red')", false},
        Case{"sys.Label LIKE 'order/%'", true}, Case{"sys.Label LIKE 'order/_'", false},
        Case{"sys.label LIKE 'order!_%' ESCAPE '!'", false},
        Case{"sys.CorrelationId = 'c-1'", true}, Case{"sys.ContentType = 'application/json'", true},
        Case{"EXISTS(colour)", true}, Case{"EXISTS(size)", false}, Case{"size IS NULL", true},
        Case{"colour IS NOT NULL", true}, Case{"size > 3", false},
        Case{"NOT size > 3", false},  // unknown stays unknown
        Case{"user.colour = 'red'", true}, Case{"[colour] = 'red'", true},
        Case{"COLOUR = 'red'", true}, Case{"'it''s' = 'it''s'", true}),
    [](const auto& p) { return "case" + std::to_string(p.index); });

TEST(SqlErrors, SayWhatAndWhere) {
  auto message = [](const char* e) {
    try {
      sql_filter(e);
    } catch (const InvalidArgument& error) {
      return std::string(error.what());
    }
    return std::string("parsed");
  };
  EXPECT_EQ(message("colour = 'red"), "SQL filter: unterminated string at position 10");
  EXPECT_EQ(message("colour = "), "SQL filter: unexpected end of the expression at position 10");
  EXPECT_EQ(message("a IN 1"), "SQL filter: expected '(' after IN at position 6");
  EXPECT_EQ(message("sys.Nope = 1"),
            "SQL filter: unknown system property 'sys.Nope' at position 1");
  EXPECT_EQ(message("a = 1 b"), "SQL filter: unexpected 'b' at position 7");
}

TEST(Correlation, AllSetFieldsMustMatch) {
  CorrelationFilter f;
  f.correlation_id = "c-1";
  f.label = "order/42";
  f.properties["quantity"] = std::int64_t{12};
  EXPECT_TRUE(correlation_filter(f)->matches(order()));
  f.properties["colour"] = std::string("blue");
  EXPECT_FALSE(correlation_filter(f)->matches(order()));
}

TEST(RuleDescription, CorrelationAndSqlFromTheWire) {
  auto sql =
      Value::map({{Value::string("sql-filter"),
                   Value::map({{Value::string("expression"), Value::string("quantity > 1")}})}});
  EXPECT_TRUE(filter_from_rule_description(sql)->matches(order()));
  auto corr =
      Value::map({{Value::string("correlation-filter"),
                   Value::map({{Value::string("label"), Value::string("order/42")},
                               {Value::string("message-id"), Value::null()},
                               {Value::string("properties"),
                                Value::map({{Value::string("colour"), Value::string("red")}})}})}});
  EXPECT_TRUE(filter_from_rule_description(corr)->matches(order()));
  EXPECT_THROW(filter_from_rule_description(Value::string("x")), InvalidArgument);
}

// A SQL filter comes from an add-rule request: its parser and the evaluator it builds must not
// recurse without a bound, however the expression nests or chains.
TEST(SqlBounds, DeepOrLongExpressionsAreRefusedNotACrash) {
  auto repeat = [](std::string_view part, std::size_t n) {
    std::string out;
    for (std::size_t i = 0; i < n; ++i) out += part;
    return out;
  };
  for (const auto& expression : {
           repeat("(", 100'000) + "1=1" + repeat(")", 100'000),
           repeat("NOT ", 100'000) + "1=1",
           repeat("-", 100'000) + "1 = 1",
           "1" + repeat(" + 1", 100'000) + " > 0",
           "1=1" + repeat(" AND 1=1", 100'000),
           "quantity IN (" + repeat("1, ", 100'000) + "1)",
       }) {
    try {
      sql_filter(expression)->matches(order());
      FAIL() << "accepted an expression of " << expression.size() << " characters";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("1024"), std::string::npos) << e.what();
    }
  }
  // Nesting within the length limit is bounded too.
  try {
    sql_filter(repeat("(", 400) + "1=1" + repeat(")", 400));
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("nested"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(sql_filter(repeat("(", 32) + "quantity > 1" + repeat(")", 32))->matches(order()));
}

}  // namespace
}  // namespace metro::emulator
