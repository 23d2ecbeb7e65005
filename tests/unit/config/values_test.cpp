#include <map>

#include <gtest/gtest.h>

#include <metro/config/config.hpp>

namespace metro::config {
namespace {

Environment fake_env(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](std::string_view name) -> std::optional<std::string> {
    auto it = vars.find(std::string(name));
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(Interpolate, ReplacesVariablesAndDefaults) {
  auto env = fake_env({{"A", "alpha"}, {"EMPTY", ""}});
  EXPECT_EQ(interpolate("x${A}y", env), "xalphay");
  EXPECT_EQ(interpolate("${B:-beta}", env), "beta");
  EXPECT_EQ(interpolate("${A:-beta}", env), "alpha");
  EXPECT_EQ(interpolate("${EMPTY:-d}", env), "d");  // as in the shell: empty takes the default
  EXPECT_EQ(interpolate("${EMPTY}", env), "");
  EXPECT_EQ(interpolate("${B:-}", env), "");
  EXPECT_EQ(interpolate("${B:-a=b;c}", env), "a=b;c");
  EXPECT_EQ(interpolate("cost $5, $$${A}", env), "cost $5, $alpha");
  EXPECT_EQ(interpolate("$${A}", env), "${A}");
}

TEST(Interpolate, ExplainsErrors) {
  auto env = fake_env({});
  auto message = [&](std::string_view text) {
    try {
      interpolate(text, env);
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message("${NOPE}"),
            "environment variable NOPE is not set (set it, or write ${NOPE:-default} to give a "
            "default)");
  EXPECT_EQ(message("${A"), "'${' without a closing '}' (write $${ for a literal ${)");
  EXPECT_EQ(message("${1A}"),
            "'${1A}' is not a variable reference (expected ${NAME} or ${NAME:-default})");
  EXPECT_EQ(message("${A-b}"),
            "'${A-b}' is not a variable reference (expected ${NAME} or ${NAME:-default})");
}

TEST(Duration, ParsesUnitsAndSums) {
  using namespace std::chrono_literals;
  EXPECT_EQ(parse_duration("250ms"), 250ms);
  EXPECT_EQ(parse_duration("30s"), 30s);
  EXPECT_EQ(parse_duration("5m"), 5min);
  EXPECT_EQ(parse_duration("1h30m"), 90min);
  EXPECT_EQ(parse_duration("0s"), 0ms);
  EXPECT_EQ(parse_duration(""), std::nullopt);
  EXPECT_EQ(parse_duration("30"), std::nullopt);
  EXPECT_EQ(parse_duration("5 m"), std::nullopt);
  EXPECT_EQ(parse_duration("-1s"), std::nullopt);
  EXPECT_EQ(parse_duration("7d"), 168h);
  EXPECT_EQ(parse_duration("1w"), std::nullopt);
  EXPECT_EQ(parse_duration("99999999999999h"), std::nullopt);  // Would overflow.
  EXPECT_EQ(parse_duration("36700d"), std::nullopt);           // Past a century.
  EXPECT_EQ(parse_duration("36500d"), 36500 * 24h);
}

}  // namespace
}  // namespace metro::config
