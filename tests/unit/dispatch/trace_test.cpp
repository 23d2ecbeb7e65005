// W3C trace context: what is accepted from a message, what metro makes, and the exec handler's
// TRACEPARENT and task JSON.
#include "../../../src/dispatch/trace.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <metro/dispatch/handler.hpp>

namespace metro::dispatch {
namespace {

constexpr const char* kValid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

TEST(TraceParent, AcceptsOnlyValidVersion00Values) {
  EXPECT_EQ(parse_traceparent(kValid), kValid);
  // A later version: its first 55 characters, when a '-' or nothing follows.
  EXPECT_EQ(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  for (const char* bad : {
           "",
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",   // 00: exact length
           "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",    // upper case
           "00-00000000000000000000000000000000-00f067aa0ba902b7-01",    // zero trace id
           "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",    // zero parent id
           "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",    // version ff
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",    // not hex
           "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",    // separator
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n",  // a newline after
           "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",   // later: no '-'
           "|4bf92f3577b34da6a3ce929d0e0e4736.00f067aa0ba902b7.",        // Request-Id form
       }) {
    EXPECT_FALSE(parse_traceparent(bad)) << bad;
  }
}

TEST(TraceParent, ContinuesAMessagesTraceOrStartsOne) {
  std::map<std::string, sb::PropertyValue> props{{"traceparent", std::string(kValid)}};
  auto mine = trace_context_of(props);
  EXPECT_EQ(mine.substr(0, 36), std::string(kValid).substr(0, 36));  // Same trace.
  EXPECT_NE(mine.substr(36, 16), "00f067aa0ba902b7");                // metro's own span.
  EXPECT_EQ(mine.substr(52), "-01");                                 // Same flags.
  EXPECT_TRUE(parse_traceparent(mine));
  // The Azure SDKs' Diagnostic-Id (names compared without regard to case).
  std::map<std::string, sb::PropertyValue> diagnostic{{"diagnostic-id", std::string(kValid)}};
  EXPECT_EQ(trace_context_of(diagnostic).substr(3, 32), "4bf92f3577b34da6a3ce929d0e0e4736");
  // Malformed, of another type, or none: a new, valid, sampled trace.
  for (auto bad : {std::map<std::string, sb::PropertyValue>{{"traceparent", std::string("x")}},
                   std::map<std::string, sb::PropertyValue>{{"traceparent", std::int64_t{7}}},
                   std::map<std::string, sb::PropertyValue>{}}) {
    auto made = trace_context_of(bad);
    EXPECT_TRUE(parse_traceparent(made)) << made;
    EXPECT_EQ(made.substr(52), "-01");
  }
  EXPECT_NE(new_traceparent(), new_traceparent());
  EXPECT_EQ(trace_suffix(kValid), " trace=4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(trace_suffix("bad"), "");
}

TEST(TraceParent, ReachesAnExecHandlersEnvironmentAndTheTaskJson) {
  Task task;
  task.handler = "h";
  task.body = "{}";
  task.trace_parent = kValid;
  auto json = nlohmann::json::parse(to_json(task));
  EXPECT_EQ(json["trace_parent"], kValid);
  // The child prints its TRACEPARENT as the error; one inherited from metro is replaced.
  ::setenv("TRACEPARENT", "00-11111111111111111111111111111111-1111111111111111-01", 1);
  auto handler =
      make_exec_handler({"sh", "-c", "cat >/dev/null; printf '%s' \"$TRACEPARENT\" >&2; exit 3"});
  auto result = handler->run(task, std::chrono::seconds(10));
  ::unsetenv("TRACEPARENT");
  EXPECT_EQ(result.error, std::string("exited with 3: ") + kValid);
}

}  // namespace
}  // namespace metro::dispatch
