#include <fstream>

#include <gtest/gtest.h>

#include <metro/emulator/emulator.hpp>

namespace metro::emulator {
namespace {

std::filesystem::path write(const std::string& name, const std::string& text) {
  auto path =
      std::filesystem::temp_directory_path() / (name + "-" + std::to_string(::getpid()) + ".toml");
  std::ofstream(path) << text;
  return path;
}

TEST(BusConfig, ReadsEntitiesRulesAndKeys) {
  auto path = write("bus", R"(
[[keys]]
name = "listen"
key = "secret"

[[queues]]
name = "q"
lock_duration = "5s"
max_delivery_count = 3
default_ttl = "1h"
dead_lettering_on_expiration = true

[[topics]]
name = "t"
  [[topics.subscriptions]]
  name = "s"
    [[topics.subscriptions.rules]]
    name = "r"
    sql = "a > 1"
    [[topics.subscriptions.rules]]
    name = "c"
    correlation = { label = "x", properties = { n = 1, ok = true } }
)");
  auto bus = load_bus_config(path);
  ASSERT_EQ(bus.keys.size(), 1u);
  EXPECT_EQ(bus.keys[0].name, "listen");
  ASSERT_EQ(bus.queues.size(), 1u);
  EXPECT_EQ(bus.queues[0].options.lock_duration, std::chrono::seconds(5));
  EXPECT_EQ(bus.queues[0].options.max_delivery_count, 3);
  EXPECT_EQ(bus.queues[0].options.default_ttl, std::chrono::hours(1));
  EXPECT_TRUE(bus.queues[0].options.dead_lettering_on_expiration);
  const auto& rules = bus.topics.at(0).subscriptions.at(0).rules;
  ASSERT_EQ(rules.size(), 2u);
  EXPECT_EQ(*rules[0].sql, "a > 1");
  EXPECT_EQ(*rules[1].correlation->label, "x");
  EXPECT_EQ(std::get<std::int64_t>(rules[1].correlation->properties.at("n")), 1);
  std::filesystem::remove(path);
}

TEST(BusConfig, ReportsEveryProblemWithLineAndKey) {
  auto path = write("bad-bus", R"([[queues]]
name = "q"
lock_duration = "soon"
colour = "red"

[[topics]]
name = "t"
  [[topics.subscriptions]]
  name = "s"
    [[topics.subscriptions.rules]]
    name = "r"
    sql = "a >"
)");
  try {
    load_bus_config(path);
    FAIL();
  } catch (const ConfigError& e) {
    std::vector<std::string> got;
    for (const auto& d : e.diagnostics()) got.push_back(d.to_string().substr(path.string().size()));
    std::vector<std::string> expected = {
        ":3: queues[0].lock_duration: expected a duration such as \"250ms\", \"30s\", \"5m\", "
        "\"1h30m\", or whole seconds, got \"soon\"",
        ":4: queues[0].colour: unknown key (expected one of: dead_lettering_on_expiration "
        "default_ttl duplicate_detection_window lock_duration max_delivery_count name "
        "requires_duplicate_detection)",
        ":12: topics[0].subscriptions[0].rules[0].sql: SQL filter: unexpected end of the "
        "expression at position 4",
    };
    EXPECT_EQ(got, expected);
  }
  std::filesystem::remove(path);
}

TEST(BusConfig, SuggestsTheKeyAMisspeltOneMeant) {
  auto path = write("typo-bus", R"([[queues]]
name = "q"
lock_durtion = "5s"
)");
  try {
    load_bus_config(path);
    FAIL();
  } catch (const ConfigError& e) {
    ASSERT_EQ(e.diagnostics().size(), 1u);
    EXPECT_EQ(e.diagnostics()[0].line, 3);
    EXPECT_EQ(e.diagnostics()[0].message, "unknown key; did you mean 'lock_duration'?");
  }
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace metro::emulator
