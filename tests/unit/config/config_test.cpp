#include <map>

#include <gtest/gtest.h>

#include <metro/config/config.hpp>

namespace metro::config {
namespace {

using namespace std::chrono_literals;

const Environment kEnv = [](std::string_view name) -> std::optional<std::string> {
  static const std::map<std::string, std::string, std::less<>> vars = {
      {"CS",
       "Endpoint=sb://localhost;SharedAccessKeyName=Root;SharedAccessKey=SAS_KEY_VALUE;"
       "UseDevelopmentEmulator=true"},
      {"TOKEN", "t0ken"}};
  auto it = vars.find(name);
  if (it == vars.end()) return std::nullopt;
  return it->second;
};

std::vector<std::string> errors_of(std::string_view text) {
  try {
    parse_config(text, "t.toml", kEnv);
  } catch (const ConfigError& e) {
    std::vector<std::string> out;
    for (const auto& d : e.diagnostics()) out.push_back(d.to_string());
    return out;
  }
  return {};
}

constexpr std::string_view kFull = R"(
[metro]
workers = 3
ledger = "sqlite://x.db"
subject_source = "body-then-property"
on_no_match = "dead-letter"
prefetch = 20
deferred_deadline = "2h"
ledger_retention = "30d"
shutdown_grace = 5

[[subscriptions]]
topic_name = "metro-demo"
subscription_name = "sub-a"
connection_string = "${CS}"
on_malformed_body = "complete"

  [[subscriptions.handlers]]
  subject = "MetroDemo/Type/GeekJokes"
  handler = "my_func"
  completion = "explicit"

  [[subscriptions.handlers]]
  subject = "MetroDemo/.*"
  regex = true
  exec = ["./run.sh", "--flag"]
  timeout = "10s"
  max_attempts = 2
  immediate_retries = 1
  backoff = "100ms"
  max_backoff = "1s"
  on_failure = "dead-letter"

  [[subscriptions.handlers]]
  name = "notify"
  subject = "MetroDemo/**"
  glob = true
  http = "http://127.0.0.1:9000/hook"

[[subscriptions]]
topic_name = "metro-demo"
subscription_name = "sub-b"
connection_string = "${CS}"
subject_source = "property"

  [[subscriptions.handlers]]
  subject = "X"
  exec = ["/bin/true"]

[admin]
listen = "127.0.0.1:0"
tokens = [{ token = "${TOKEN}", role = "admin", name = "ops" }, { token = "v", role = "viewer" }]
)";

TEST(Config, ReadsEveryOption) {
  auto c = parse_config(kFull, "t.toml", kEnv);
  EXPECT_EQ(c.path, "t.toml");
  EXPECT_EQ(c.metro.workers, 3);
  EXPECT_EQ(c.metro.ledger, "sqlite://x.db");
  EXPECT_EQ(c.metro.subject_source, routing::SubjectSource::kBodyThenProperty);
  EXPECT_EQ(c.metro.on_no_match, NoMatchPolicy::kDeadLetter);
  EXPECT_EQ(c.metro.deferred_deadline, 2h);
  EXPECT_EQ(c.metro.ledger_retention, 30 * 24h);
  EXPECT_EQ(c.metro.shutdown_grace, 5s);
  ASSERT_EQ(c.subscriptions.size(), 2u);

  const auto& a = c.subscriptions[0];
  EXPECT_EQ(a.entity_path(), "metro-demo/Subscriptions/sub-a");
  EXPECT_EQ(a.connection.host, "localhost");
  EXPECT_EQ(a.subject_source, routing::SubjectSource::kBodyThenProperty);  // inherited
  EXPECT_EQ(a.on_no_match, NoMatchPolicy::kDeadLetter);                    // inherited
  EXPECT_EQ(a.on_malformed_body, MalformedBodyPolicy::kComplete);          // overridden
  EXPECT_EQ(a.prefetch, 20);
  ASSERT_EQ(a.handlers.size(), 3u);
  EXPECT_EQ(a.handlers[0].name, "my_func");
  EXPECT_EQ(a.handlers[0].kind, HandlerKind::kFunction);
  EXPECT_EQ(a.handlers[0].completion, Completion::kExplicit);
  EXPECT_EQ(a.handlers[0].retry.max_attempts, 5);  // default
  EXPECT_EQ(a.handlers[1].name, "run.sh");
  EXPECT_EQ(a.handlers[1].match, routing::MatchKind::kRegex);
  EXPECT_EQ(a.handlers[1].exec, (std::vector<std::string>{"./run.sh", "--flag"}));
  EXPECT_EQ(a.handlers[1].timeout, 10s);
  EXPECT_EQ(a.handlers[1].retry.max_attempts, 2);
  EXPECT_EQ(a.handlers[1].retry.immediate_retries, 1);
  EXPECT_EQ(a.handlers[1].retry.backoff, 100ms);
  EXPECT_EQ(a.handlers[1].retry.max_backoff, 1s);
  EXPECT_EQ(a.handlers[1].on_failure, FailurePolicy::kDeadLetter);
  EXPECT_EQ(a.handlers[2].name, "notify");
  EXPECT_EQ(a.handlers[2].kind, HandlerKind::kHttp);
  EXPECT_EQ(a.handlers[2].match, routing::MatchKind::kGlob);
  EXPECT_EQ(a.handlers[2].line, 34);

  EXPECT_EQ(c.subscriptions[1].subject_source, routing::SubjectSource::kProperty);
  ASSERT_EQ(c.admin.tokens.size(), 2u);
  EXPECT_EQ(c.admin.tokens[0].name, "ops");
  EXPECT_EQ(c.admin.tokens[0].token, "t0ken");
  EXPECT_EQ(c.admin.tokens[0].role, Role::kAdmin);
  EXPECT_EQ(c.admin.tokens[1].name, "token-1");
  EXPECT_EQ(c.admin.tokens[1].role, Role::kViewer);
}

TEST(Config, AppliesDefaults) {
  auto c = parse_config(R"(
[[subscriptions]]
topic_name = "t"
subscription_name = "s"
connection_string = "${CS}"
[[subscriptions.handlers]]
subject = "x"
handler = "f"
)",
                        "t.toml", kEnv);
  EXPECT_EQ(c.metro.workers, 8);
  EXPECT_EQ(c.metro.ledger, "sqlite://metro-ledger.db");
  EXPECT_EQ(c.metro.subject_source, routing::SubjectSource::kBody);
  EXPECT_EQ(c.subscriptions[0].on_no_match, NoMatchPolicy::kComplete);
  EXPECT_EQ(c.subscriptions[0].on_malformed_body, MalformedBodyPolicy::kDeadLetter);
  EXPECT_EQ(c.subscriptions[0].handlers[0].timeout, 5min);
  EXPECT_EQ(c.subscriptions[0].handlers[0].on_failure, FailurePolicy::kPark);
  EXPECT_TRUE(c.admin.enabled);
  EXPECT_EQ(c.admin.listen, "127.0.0.1:8080");
}

TEST(Config, InstanceIdAndLeaseForInstancesSharingALedger) {
  const char* subscription = R"(
[[subscriptions]]
topic_name = "t"
subscription_name = "s"
connection_string = "${CS}"
[[subscriptions.handlers]]
subject = "x"
handler = "f"
)";
  auto defaults = parse_config(subscription, "t.toml", kEnv);
  EXPECT_EQ(defaults.metro.instance_id, "");  // <host name>-<pid>, filled in by the service.
  EXPECT_EQ(defaults.metro.lease, 30s);
  auto c = parse_config(std::string("[metro]\nledger = \"postgresql://metro:pw@db:5432/metro\"\n"
                                    "instance_id = \"metro-1\"\nlease = \"10s\"\n") +
                            subscription,
                        "t.toml", kEnv);
  EXPECT_EQ(c.metro.ledger, "postgresql://metro:pw@db:5432/metro");
  EXPECT_EQ(c.metro.instance_id, "metro-1");
  EXPECT_EQ(c.metro.lease, 10s);
  auto errors =
      errors_of(std::string("[metro]\ninstance_id = \"two words\"\nlease = \"500ms\"\n") +
                subscription);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0],
            "t.toml:2: metro.instance_id: expected 1 to 128 printable characters without spaces, "
            "got \"two words\"");
  EXPECT_EQ(errors[1], "t.toml:3: metro.lease: expected a duration from 1s to 1h");
}

TEST(Config, DeferModeAndDeferAfterInheritedAndOverriddenPerSubscription) {
  const char* text = R"([metro]
defer = "when-slow"
defer_after = "2s"
[[subscriptions]]
topic_name = "t"
subscription_name = "inherits"
connection_string = "${CS}"
[[subscriptions.handlers]]
subject = "x"
handler = "f"
[[subscriptions]]
topic_name = "t"
subscription_name = "overrides"
connection_string = "${CS}"
defer = "always"
[[subscriptions.handlers]]
subject = "x"
handler = "f"
[[subscriptions]]
topic_name = "t"
subscription_name = "own-time"
connection_string = "${CS}"
defer_after = "250ms"
[[subscriptions.handlers]]
subject = "x"
handler = "f"
)";
  auto c = parse_config(text, "t.toml", kEnv);
  EXPECT_EQ(c.metro.defer, metro::config::DeferMode::kWhenSlow);
  EXPECT_EQ(c.subscriptions[0].defer, metro::config::DeferMode::kWhenSlow);
  EXPECT_EQ(c.subscriptions[0].defer_after, 2s);
  EXPECT_EQ(c.subscriptions[1].defer, metro::config::DeferMode::kAlways);
  EXPECT_EQ(c.subscriptions[2].defer_after, 250ms);
  // The default: always, and a quarter of each message's lock when when-slow.
  auto defaults = parse_config(
      "[[subscriptions]]\ntopic_name = \"t\"\nsubscription_name = \"s\"\n"
      "connection_string = \"${CS}\"\ndefer = \"when-slow\"\n"
      "[[subscriptions.handlers]]\nsubject = \"x\"\nhandler = \"f\"\n",
      "t.toml", kEnv);
  EXPECT_EQ(defaults.metro.defer, metro::config::DeferMode::kAlways);
  EXPECT_EQ(defaults.subscriptions[0].defer, metro::config::DeferMode::kWhenSlow);
  EXPECT_FALSE(defaults.subscriptions[0].defer_after.has_value());

  auto errors = errors_of("[metro]\ndefer = \"sometimes\"\ndefer_after = \"10m\"\n" +
                          std::string(text).substr(std::string(text).find("[[subscriptions]]")));
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_NE(errors[0].find("t.toml:2: metro.defer: "), std::string::npos) << errors[0];
  EXPECT_NE(errors[0].find("\"when-slow\""), std::string::npos) << errors[0];
  EXPECT_EQ(errors[1], "t.toml:3: metro.defer_after: expected a duration from 1ms to 4m");
}

TEST(Config, CompletedRowsAndTheirRetention) {
  const char* subscription = R"(
[[subscriptions]]
topic_name = "t"
subscription_name = "s"
connection_string = "${CS}"
[[subscriptions.handlers]]
subject = "x"
handler = "f"
)";
  auto with = [&](const std::string& metro) {
    return parse_config("[metro]\n" + metro + subscription, "t.toml", kEnv).metro;
  };
  auto defaults = parse_config(subscription, "t.toml", kEnv).metro;
  EXPECT_EQ(defaults.completed_rows, MetroOptions::CompletedRows::kLean);
  EXPECT_EQ(defaults.completed_retention, 24h);
  EXPECT_EQ(defaults.ledger_retention, 7 * 24h);
  EXPECT_EQ(with("workers = 2\n").completed_retention, 24h);
  EXPECT_EQ(with("completed_rows = \"full\"\n").completed_rows, MetroOptions::CompletedRows::kFull);
  EXPECT_EQ(with("completed_rows = \"lean\"\n").completed_rows, MetroOptions::CompletedRows::kLean);
  EXPECT_EQ(with("completed_retention = \"3d\"\n").completed_retention, 72h);
  EXPECT_EQ(with("completed_retention = 0\n").completed_retention, 0ms);
  // Unset, it follows a shorter ledger_retention, and keeps completed rows when that does.
  EXPECT_EQ(with("ledger_retention = \"12h\"\n").completed_retention, 12h);
  EXPECT_EQ(with("ledger_retention = \"30d\"\n").completed_retention, 24h);
  EXPECT_EQ(with("ledger_retention = 0\n").completed_retention, 0ms);
  EXPECT_EQ(with("ledger_retention = 0\ncompleted_retention = \"2h\"\n").completed_retention, 2h);
  auto errors = errors_of(std::string("[metro]\ncompleted_rows = \"slim\"\n"
                                      "completed_retention = \"soon\"\n") +
                          subscription);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0],
            "t.toml:2: metro.completed_rows: expected one of \"lean\" or \"full\", "
            "got \"slim\"");
  EXPECT_EQ(errors[1],
            "t.toml:3: metro.completed_retention: expected a duration such as \"250ms\", "
            "\"30s\", \"5m\", \"1h30m\", or whole seconds, got \"soon\"");
}

TEST(Config, DeduplicatesDefaultHandlerNames) {
  auto c = parse_config(R"(
[[subscriptions]]
topic_name = "t"
subscription_name = "s"
connection_string = "${CS}"
[[subscriptions.handlers]]
subject = "a"
exec = ["h.sh"]
[[subscriptions.handlers]]
subject = "b"
exec = ["h.sh"]
)",
                        "t.toml", kEnv);
  EXPECT_EQ(c.subscriptions[0].handlers[0].name, "h.sh");
  EXPECT_EQ(c.subscriptions[0].handlers[1].name, "h.sh#1");
}

TEST(Config, ReportsEveryErrorWithLineAndKeyPath) {
  auto errors = errors_of(R"([metro]
wrokers = 3
ledger = "mysql://x"

[[subscriptions]]
topic_name = "t"
connection_string = "Endpoint=sb://h/;SharedAccessKeyName=k;SharedAccessKey=v;EntityPath=other"

  [[subscriptions.handlers]]
  subject = "a("
  regex = true

  [[subscriptions.handlers]]
  subject = 7
  handler = "f"
  exec = ["x"]
)");
  std::vector<std::string> expected = {
      "t.toml:2: metro.wrokers: unknown key; did you mean 'workers'?",
      "t.toml:3: metro.ledger: expected \"sqlite://<file>\" or \"postgresql://…\", got "
      "\"mysql://x\"",
      "t.toml:5: subscriptions[0].subscription_name: missing (expected a string)",
      "t.toml:7: subscriptions[0].connection_string: its EntityPath 'other' disagrees with "
      "topic_name 't' (remove EntityPath or make them equal)",
      "t.toml:9: subscriptions[0].handlers[0].handler: a handler needs one way to run: handler = "
      "\"function\", exec = [\"cmd\"], http = \"http://…\", python = \"module.function\" or "
      "celery = \"task.name\"",
      "t.toml:10: subscriptions[0].handlers[0].subject: invalid regex 'a(': missing ): a(",
      "t.toml:13: subscriptions[0].handlers[1].handler: a handler runs exactly one way, but this "
      "one sets 2 of handler, exec, http, python and celery",
      "t.toml:14: subscriptions[0].handlers[1].subject: expected a string, got an integer",
  };
  EXPECT_EQ(errors, expected);
}

TEST(Config, ReportsDuplicateSubscriptionsCaseInsensitively) {
  auto errors = errors_of(R"(
[[subscriptions]]
topic_name = "t"
subscription_name = "s"
connection_string = "${CS}"
[[subscriptions.handlers]]
subject = "x"
handler = "f"

[[subscriptions]]
topic_name = "T"
subscription_name = "S"
connection_string = "${CS}"
[[subscriptions.handlers]]
subject = "x"
handler = "f"
)");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0],
            "t.toml:10: subscriptions[1]: duplicate subscription T/S (already defined by "
            "subscriptions[0] at line 2)");
}

TEST(Config, ReportsUnsetEnvironmentVariables) {
  auto errors = errors_of(R"(
[[subscriptions]]
topic_name = "t"
subscription_name = "s"
connection_string = "${MISSING_CS}"
[[subscriptions.handlers]]
subject = "x"
handler = "f"
)");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0],
            "t.toml:5: subscriptions[0].connection_string: environment variable MISSING_CS is not "
            "set (set it, or write ${MISSING_CS:-default} to give a default)");
}

TEST(Config, ReportsSyntaxErrorsWithColumn) {
  auto errors = errors_of("[metro]\nworkers = = 3\n");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].rfind("t.toml:2:", 0), 0u) << errors[0];
  EXPECT_NE(errors[0].find("TOML syntax error"), std::string::npos) << errors[0];
}

TEST(Config, NeedsSubscriptions) {
  EXPECT_EQ(errors_of("[metro]\nworkers = 2\n"),
            (std::vector<std::string>{
                "t.toml: subscriptions: missing (expected at least one [[subscriptions]] table)"}));
}

TEST(Config, ReportsAnUnreadableFile) {
  try {
    load_config("/nonexistent/metro.toml", kEnv);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.diagnostics().at(0).to_string(),
              "/nonexistent/metro.toml: cannot read the file: No such file or directory");
  }
}

}  // namespace
}  // namespace metro::config
