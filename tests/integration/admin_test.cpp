// The admin API against a running service and the in-process emulator: every route, filter and
// error, the auth rules, the audit lines, retry by sequence number, and `metro deferred` (the real
// binary) against it.

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <metro/admin/server.hpp>
#include <metro/config/config.hpp>
#include <metro/dispatch/service.hpp>
#include <metro/emulator/emulator.hpp>
#include <metro/sb/client.hpp>

#include "../support/raw_http.hpp"
#include "../support/test_support.hpp"

namespace {

using metro::test::raw_request;
using metro::test::RawConnection;
using metro::test::wait_until;

using namespace std::chrono_literals;
using metro::ledger::State;
using nlohmann::json;

constexpr const char* kEntity = "orders/Subscriptions/billing";
constexpr const char* kAdmin = "admin-secret";
constexpr const char* kViewer = "viewer-secret";

class AdminTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("metro-admin-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    metro::emulator::EmulatorOptions options;
    options.port = 0;
    metro::emulator::TopicOptions orders{"orders", {}, {}};
    orders.subscriptions.push_back({"billing", {}, {}});
    orders.subscriptions.push_back({"shipping", {}, {}});
    options.bus.topics.push_back(orders);
    bus_ = std::make_unique<metro::emulator::Emulator>(options);
    bus_->start();
    audit_ = std::make_shared<spdlog::sinks::ostream_sink_mt>(audit_text_);
    spdlog::default_logger()->sinks().push_back(audit_);
  }

  void TearDown() override {
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), audit_), sinks.end());
    api_.reset();
    service_.reset();
    bus_.reset();
    std::filesystem::remove_all(dir_);
  }

  /// Starts a service on orders/billing (handler `flaky`, failing while `broken_`) and
  /// orders/shipping (handler `ok`), and the API with `tokens` (TOML array text, or empty).
  static constexpr const char* kTokens =
      R"([{ name = "ops", token = "admin-secret", role = "admin" },
          { name = "dash", token = "viewer-secret", role = "viewer" }])";

  void start(const std::string& tokens = kTokens, metro::admin::Limits limits = {}) {
    std::string cs = bus_->connection_string();
    std::string text = "[metro]\nworkers = 4\nledger = \"sqlite://" +
                       (dir_ / "ledger.db").string() +
                       "\"\n"
                       "[[subscriptions]]\ntopic_name = \"orders\"\nsubscription_name = "
                       "\"billing\"\nconnection_string = \"" +
                       cs +
                       "\"\n[[subscriptions.handlers]]\nsubject = \"Orders/**\"\nglob = true\n"
                       "handler = \"flaky\"\nmax_attempts = 2\nbackoff = \"10ms\"\n"
                       "[[subscriptions]]\ntopic_name = \"orders\"\nsubscription_name = "
                       "\"shipping\"\nconnection_string = \"" +
                       cs +
                       "\"\n[[subscriptions.handlers]]\nsubject = \"Orders/**\"\nglob = true\n"
                       "handler = \"ok\"\n"
                       "[admin]\nlisten = \"127.0.0.1:0\"\n" +
                       (tokens.empty() ? "" : "tokens = " + tokens + "\n");
    auto config = metro::config::parse_config(text, "admin-test.toml");
    metro::dispatch::ServiceOptions options;
    if (operation_timeout_) options.client.operation_timeout = *operation_timeout_;
    options.functions = {{"flaky",
                          [this](const metro::dispatch::Task&) {
                            if (broken_) throw std::runtime_error("the billing system is down");
                          }},
                         {"ok", [](const metro::dispatch::Task&) {}}};
    service_ = std::make_unique<metro::dispatch::Service>(config, options);
    service_->start();
    api_ = std::make_unique<metro::admin::Server>(*service_, config.admin, limits);
    api_->start();
    http_ = std::make_unique<httplib::Client>("127.0.0.1", api_->port());
  }

  void publish(const std::string& subject, const std::string& correlation = {}) {
    metro::sb::Client client(bus_->connection_string());
    metro::sb::Message m;
    m.body = json{{"subject", subject}, {"n", ++published_}}.dump();
    if (!correlation.empty()) m.correlation_id = correlation;
    client.create_sender("orders").send(m);
  }

  std::optional<State> state_of(const std::string& sub, std::int64_t seq) {
    auto row = service_->ledger().find({"orders", sub, seq});
    if (!row) return std::nullopt;
    return row->state;
  }

  httplib::Headers auth(const char* token) {
    return {{"Authorization", std::string("Bearer ") + token}};
  }

  std::pair<int, json> get(const std::string& path, const char* token = kAdmin) {
    auto r = http_->Get(path, token ? auth(token) : httplib::Headers{});
    if (!r) return {0, {}};
    return {r->status, json::parse(r->body, nullptr, false)};
  }

  std::pair<int, json> post(const std::string& path, const std::string& body = {},
                            const char* token = kAdmin) {
    auto r = http_->Post(path, token ? auth(token) : httplib::Headers{}, body, "application/json");
    if (!r) return {0, {}};
    return {r->status, json::parse(r->body, nullptr, false)};
  }

  /// Parks one message on billing (two failed attempts) and returns its sequence number.
  std::int64_t park_one() {
    publish("Orders/Created", "order-7");
    EXPECT_TRUE(wait_until([&] { return state_of("billing", 1) == State::kFailed; }));
    return 1;
  }

  std::string audit_log() {
    spdlog::default_logger()->flush();
    return audit_text_.str();
  }

  std::filesystem::path dir_;
  std::unique_ptr<metro::emulator::Emulator> bus_;
  std::unique_ptr<metro::dispatch::Service> service_;
  std::unique_ptr<metro::admin::Server> api_;
  std::unique_ptr<httplib::Client> http_;
  std::atomic<bool> broken_{true};
  std::optional<std::chrono::milliseconds> operation_timeout_;
  int published_ = 0;
  std::ostringstream audit_text_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> audit_;
};

TEST_F(AdminTest, RetryBySequenceNumberAfterTheHandlerIsFixed) {
  start();
  park_one();
  auto [status, m] = get("/api/v1/deferred/orders/billing/1");
  ASSERT_EQ(status, 200);
  EXPECT_EQ(m["state"], "failed");
  EXPECT_EQ(m["correlation_id"], "order-7");
  EXPECT_EQ(m["last_error"], "flaky: the billing system is down");
  EXPECT_EQ(m["body"]["subject"], "Orders/Created");
  ASSERT_EQ(m["runs"].size(), 2u);
  EXPECT_EQ(m["runs"][1]["attempt"], 2);
  EXPECT_EQ(m["runs"][1]["outcome"], "failed");
  EXPECT_EQ(m["runs"][1]["error"], "the billing system is down");
  EXPECT_EQ(bus_->counts(kEntity).deferred, 1u);

  broken_ = false;
  std::tie(status, m) = post("/api/v1/deferred/orders/billing/1/retry");
  EXPECT_EQ(status, 202) << m.dump();
  ASSERT_TRUE(wait_until([&] { return state_of("billing", 1) == State::kCompleted; }));
  EXPECT_TRUE(wait_until([&] { return bus_->counts(kEntity).total() == 0; }));
  std::tie(status, m) = get("/api/v1/deferred/orders/billing/1");
  EXPECT_EQ(m["runs"].size(), 3u);
  EXPECT_EQ(m["runs"][2]["outcome"], "succeeded");

  std::tie(status, m) = post("/api/v1/deferred/orders/billing/1/retry");
  EXPECT_EQ(status, 409);
  EXPECT_EQ(m["error"], "orders/billing#1 is already completed");
  EXPECT_NE(audit_log().find("audit: token=ops action=retry message=orders/billing#1 outcome=ok"),
            std::string::npos)
      << audit_log();
}

TEST_F(AdminTest, ListFiltersAndPages) {
  start();
  broken_ = false;
  for (int i = 0; i < 5; ++i) publish(i % 2 == 0 ? "Orders/Created" : "Orders/Paid/Card");
  ASSERT_TRUE(wait_until([&] {
    return service_->ledger().counts()[State::kCompleted] == 10;  // 5 on each subscription
  }));
  auto [status, page] = get("/api/v1/deferred?topic=orders&subscription=billing&limit=2");
  ASSERT_EQ(status, 200);
  ASSERT_EQ(page["items"].size(), 2u);
  EXPECT_EQ(page["items"][0]["sequence_number"], 1);
  EXPECT_FALSE(page["items"][0].contains("body"));  // Lists are light; show has the body.
  std::vector<std::int64_t> seen;
  std::string after;
  for (int pages = 0; pages < 10; ++pages) {
    std::tie(status, page) = get("/api/v1/deferred?subscription=billing&limit=2" +
                                 (after.empty() ? "" : "&after=" + after));
    for (auto& m : page["items"]) seen.push_back(m["sequence_number"]);
    if (page["next"].is_null()) break;
    after = page["next"];
  }
  EXPECT_EQ(seen, (std::vector<std::int64_t>{1, 2, 3, 4, 5}));

  EXPECT_EQ(get("/api/v1/deferred?subject=Orders/Paid").second["items"].size(), 4u);
  EXPECT_EQ(get("/api/v1/deferred?subject=Orders/*/Card").second["items"].size(), 4u);
  EXPECT_EQ(get("/api/v1/deferred?subject=Orders/Created").second["items"].size(), 6u);
  EXPECT_EQ(get("/api/v1/deferred?state=completed").second["items"].size(), 10u);
  EXPECT_EQ(get("/api/v1/deferred?state=failed").second["items"].size(), 0u);
  EXPECT_EQ(get("/api/v1/deferred?older_than=1h").second["items"].size(), 0u);
  EXPECT_EQ(get("/api/v1/deferred?older_than=0s").second["items"].size(), 10u);

  for (const char* bad : {"/api/v1/deferred?state=lost", "/api/v1/deferred?limit=0",
                          "/api/v1/deferred?limit=x", "/api/v1/deferred?limit=5000",
                          "/api/v1/deferred?after=zz", "/api/v1/deferred?older_than=soon"}) {
    auto [code, error] = get(bad);
    EXPECT_EQ(code, 400) << bad;
    EXPECT_TRUE(error["error"].is_string()) << bad;
  }
  EXPECT_EQ(get("/api/v1/deferred?state=lost").second["error"],
            "unknown state 'lost'; one of deferring, deferred, running, retrying, failed, "
            "completed, dead-lettered, orphaned");
}

TEST_F(AdminTest, CompleteAndDeadLetterAParkedMessage) {
  start();
  park_one();
  publish("Orders/Created");
  ASSERT_TRUE(wait_until([&] { return state_of("billing", 2) == State::kFailed; }));

  auto [status, m] = post("/api/v1/deferred/orders/billing/1/complete");
  EXPECT_EQ(status, 200) << m.dump();
  EXPECT_EQ(m["state"], "completed");
  EXPECT_EQ(post("/api/v1/deferred/orders/billing/1/complete").first, 409);

  std::tie(status, m) = post("/api/v1/deferred/orders/billing/2/dead-letter",
                             R"({"reason": "BadOrder", "description": "customer unknown"})");
  EXPECT_EQ(status, 200) << m.dump();
  EXPECT_EQ(m["state"], "dead-lettered");
  EXPECT_EQ(bus_->counts(kEntity).total(), 0u);
  metro::sb::Client client(bus_->connection_string());
  auto dlq = client.create_receiver(std::string(kEntity) + "/$DeadLetterQueue").receive(1, 5s);
  ASSERT_EQ(dlq.size(), 1u);
  EXPECT_EQ(dlq[0].dead_letter_reason, "BadOrder");
  EXPECT_EQ(dlq[0].dead_letter_description, "customer unknown");
  EXPECT_EQ(post("/api/v1/deferred/orders/billing/2/dead-letter", "{}").first, 409);
  EXPECT_EQ(post("/api/v1/deferred/orders/billing/2/dead-letter", "[1]").first, 409);
  auto [code, error] = post("/api/v1/deferred/orders/billing/99/dead-letter", "[1]");
  EXPECT_EQ(code, 404);
}

TEST_F(AdminTest, UnknownMessagesRoutesAndTopics) {
  start();
  auto [status, error] = get("/api/v1/deferred/orders/billing/42");
  EXPECT_EQ(status, 404);
  EXPECT_EQ(error["error"], "no deferred message orders/billing#42 is known");
  EXPECT_EQ(post("/api/v1/deferred/orders/billing/42/retry").first, 404);
  EXPECT_EQ(post("/api/v1/deferred/orders/billing/42/complete").first, 404);
  EXPECT_EQ(post("/api/v1/deferred/nope/billing/1/retry").first, 404);
  std::tie(status, error) = get("/api/v1/nothing-here");
  EXPECT_EQ(status, 404);
  EXPECT_EQ(error["error"], "no route GET /api/v1/nothing-here (see /api/v1 in the README)");
  std::tie(status, error) = post("/api/v1/publish", R"({"topic": "nope", "body": {}})");
  EXPECT_EQ(status, 404);
  std::tie(status, error) = post("/api/v1/publish", R"({"body": {}})");
  EXPECT_EQ(status, 400);
  EXPECT_EQ(post("/api/v1/publish", "not json").first, 400);
}

TEST_F(AdminTest, PublishSubscriptionsHealthReadinessAndMetrics) {
  start();
  broken_ = false;
  auto [status, body] = post("/api/v1/publish",
                             R"({"topic": "orders", "subject": "Orders/Created",
                                 "body": {"subject": "Orders/Created"}, "correlation_id": "c-1"})");
  EXPECT_EQ(status, 202) << body.dump();
  ASSERT_TRUE(wait_until([&] { return state_of("shipping", 1) == State::kCompleted; }));
  EXPECT_EQ(service_->ledger().find({"orders", "shipping", 1})->correlation_id, "c-1");

  std::tie(status, body) = get("/api/v1/subscriptions");
  ASSERT_EQ(status, 200);
  ASSERT_EQ(body["items"].size(), 2u);
  EXPECT_EQ(body["items"][0]["subscription"], "billing");
  EXPECT_EQ(body["items"][0]["state"], "connected");
  EXPECT_EQ(body["items"][0]["handlers"][0], "flaky");
  EXPECT_TRUE(wait_until(
      [&] { return get("/api/v1/subscriptions").second["items"][0]["counts"]["completed"] == 1; }));
  EXPECT_TRUE(body["items"][0]["last_message"].is_string());
  // The instances sharing the ledger: this one alone here, live, with its heartbeat.
  EXPECT_EQ(body["instance"], service_->instance_id());
  ASSERT_EQ(body["instances"].size(), 1u) << body.dump();
  EXPECT_EQ(body["instances"][0]["id"], service_->instance_id());
  EXPECT_EQ(body["instances"][0]["live"], true);
  EXPECT_EQ(body["instances"][0]["this"], true);
  EXPECT_TRUE(body["instances"][0]["last_heartbeat"].is_string());
  EXPECT_TRUE(body["instances"][0]["in_flight"].is_number());
  // Each ledger row names the instance that handled it.
  auto row = get("/api/v1/deferred/orders/shipping/1").second;
  EXPECT_EQ(row["owner"], service_->instance_id()) << row.dump();

  auto health = http_->Get("/healthz");
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "ok\n");
  std::tie(status, body) = get("/readyz", nullptr);
  EXPECT_EQ(status, 200);
  EXPECT_EQ(body["ready"], true);

  EXPECT_EQ(http_->Get("/metrics")->status, 401);
  auto metrics = http_->Get("/metrics", auth(kViewer))->body;
  for (const char* line :
       {"metro_messages_received_total 2", "metro_messages_completed_total 2",
        "metro_messages_routed_total 2",
        "metro_ledger_messages{topic=\"orders\",subscription=\"shipping\",state=\"completed\"} 1",
        "metro_oldest_deferred_age_seconds{topic=\"orders\",subscription=\"billing\"} 0",
        "metro_subscription_connected{topic=\"orders\",subscription=\"billing\"} 1",
        "metro_handler_duration_seconds_count{topic=\"orders\",subscription=\"billing\","
        "handler=\"flaky\"} 1",
        "# TYPE metro_handler_duration_seconds histogram", "le=\"+Inf\"} 1",
        "metro_instance_up{instance=\"",
        "# TYPE metro_instance_messages_in_flight gauge",
        "metro_instance_heartbeat_age_seconds{instance=\""}) {
    EXPECT_NE(metrics.find(line), std::string::npos) << line << "\n" << metrics;
  }
  EXPECT_NE(metrics.find("metro_instance_up{instance=\"" + service_->instance_id() + "\"} 1"),
            std::string::npos)
      << metrics;
  auto page = http_->Get("/");
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->body.find("<title>metro</title>"), std::string::npos);
}

TEST_F(AdminTest, TokensAndRoles) {
  start();
  park_one();
  auto target = "/api/v1/deferred/orders/billing/1";
  EXPECT_EQ(get(target, nullptr).first, 401);
  EXPECT_EQ(get(target, "wrong").first, 401);
  EXPECT_EQ(get(target, "admin-secretX").first, 401);
  auto no_token = http_->Get(target);
  EXPECT_EQ(no_token->get_header_value("WWW-Authenticate"), "Bearer");
  EXPECT_EQ(get(target, kViewer).first, 200);
  EXPECT_EQ(get("/api/v1/whoami", kViewer).second["role"], "viewer");
  EXPECT_EQ(get("/api/v1/whoami", kAdmin).second,
            (json{{"name", "ops"}, {"role", "admin"}, {"actions", true}}));

  auto [status, error] = post(std::string(target) + "/retry", {}, kViewer);
  EXPECT_EQ(status, 403);
  EXPECT_EQ(error["error"], "the token 'dash' is a viewer's; retry needs an admin token");
  EXPECT_EQ(post(std::string(target) + "/complete", {}, nullptr).first, 401);
  EXPECT_EQ(post("/api/v1/publish", R"({"topic": "orders", "body": {}})", kViewer).first, 403);
  EXPECT_EQ(post(std::string(target) + "/complete", {}, kAdmin).first, 200);
  auto log = audit_log();
  EXPECT_NE(log.find("audit: token=dash action=retry message=orders/billing#1 outcome=\"denied: "
                     "viewer\""),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("audit: token=- action=complete message=orders/billing#1 outcome=\"denied: "
                     "no valid token\""),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("audit: token=ops action=complete message=orders/billing#1 outcome=ok"),
            std::string::npos);
  EXPECT_EQ(log.find("admin-secret"), std::string::npos);
}

TEST_F(AdminTest, WithoutTokensReadsOnLoopbackAndRefusesEveryAction) {
  start("");
  park_one();
  EXPECT_EQ(get("/api/v1/deferred/orders/billing/1", nullptr).first, 200);
  auto [status, error] = post("/api/v1/deferred/orders/billing/1/retry", {}, nullptr);
  EXPECT_EQ(status, 403);
  EXPECT_NE(error["error"].get<std::string>().find("add { token = "), std::string::npos);
  EXPECT_EQ(get("/api/v1/whoami", nullptr).second["actions"], false);
}

/// An HTTP/1.1 request as bytes: `body` with a Content-Length unless `length` is false (as curl
/// sends `-X POST` without data: no Content-Length at all).
std::string http_request(const std::string& method, const std::string& target, const char* token,
                         const std::string& body = {}, bool length = true,
                         const std::string& extra_headers = {}) {
  std::string text = method + " " + target + " HTTP/1.1\r\nHost: metro\r\n";
  if (token != nullptr) text += std::string("Authorization: Bearer ") + token + "\r\n";
  if (length) text += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  return text + extra_headers + "\r\n" + body;
}

/// The response is the documented error: JSON `{"error": "<text>", "status": <its status>}`.
void expect_json_error(const std::optional<metro::test::RawResponse>& r, int status,
                       const std::string& what) {
  ASSERT_TRUE(r.has_value()) << what << ": no answer";
  EXPECT_EQ(r->status, status) << what << ": " << r->body;
  EXPECT_EQ(r->headers.count("content-type") ? r->headers.at("content-type") : "",
            "application/json")
      << what;
  auto body = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(body.is_object()) << what << ": " << r->body;
  EXPECT_TRUE(body["error"].is_string()) << what << ": " << r->body;
  EXPECT_EQ(body["status"], status) << what << ": " << r->body;
}

TEST_F(AdminTest, ActionsTakeNoBodyAnEmptyBodyOrAnEmptyObject) {
  start();
  park_one();
  publish("Orders/Created");
  publish("Orders/Created");
  ASSERT_TRUE(wait_until([&] { return state_of("billing", 3) == State::kFailed; }));
  auto port = api_->port();
  // curl -X POST sends neither a body nor a Content-Length.
  auto r = raw_request(
      port, http_request("POST", "/api/v1/deferred/orders/billing/1/retry", kAdmin, {}, false));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 202) << r->body;
  EXPECT_EQ(json::parse(r->body)["sequence_number"], 1);
  r = raw_request(port, http_request("POST", "/api/v1/deferred/orders/billing/2/complete", kAdmin));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["state"], "completed");
  r = raw_request(
      port, http_request("POST", "/api/v1/deferred/orders/billing/3/dead-letter", kAdmin, "{}"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  metro::sb::Client client(bus_->connection_string());
  auto dlq = client.create_receiver(std::string(kEntity) + "/$DeadLetterQueue").receive(1, 5s);
  ASSERT_EQ(dlq.size(), 1u);
  EXPECT_EQ(dlq[0].dead_letter_reason, "DeadLetteredByOperator");
  // A client that waits for 100 Continue before it sends the body.
  RawConnection waiting(port);
  waiting.send("POST /api/v1/deferred/orders/billing/1/dead-letter HTTP/1.1\r\nAuthorization: "
               "Bearer admin-secret\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
  auto go_on = waiting.read_response(20s);
  ASSERT_TRUE(go_on);
  EXPECT_EQ(go_on->status, 100);
  waiting.send("{}");
  r = waiting.read_response(20s);
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->status == 200 || r->status == 409) << r->status << " " << r->body;
  // Chunked, empty.
  r = raw_request(port, http_request("POST", "/api/v1/deferred/orders/billing/1/complete", kAdmin,
                                     "0\r\n\r\n", false, "Transfer-Encoding: chunked\r\n"));
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->status == 200 || r->status == 409) << r->status << " " << r->body;
}

TEST_F(AdminTest, EveryErrorIsTheDocumentedJsonErrorTheTokenChecked) {
  start();
  park_one();
  auto port = api_->port();
  struct Case {
    std::string what;
    std::string request;
    int status;
  };
  const std::string deep_body =
      R"({"topic": "orders", "body": )" + std::string(129, '[') + std::string(129, ']') + "}";
  std::vector<Case> cases = {
      // Path and query values: 400 with a token, 401 without, never 500.
      {"sequence past int64",
       http_request("GET", "/api/v1/deferred/orders/billing/9223372036854775808", kAdmin), 400},
      {"sequence past int64, no token",
       http_request("GET", "/api/v1/deferred/orders/billing/9223372036854775808", nullptr), 401},
      {"huge sequence, action",
       http_request("POST", "/api/v1/deferred/orders/billing/99999999999999999999999/retry", kAdmin,
                    {}, false),
       400},
      {"negative sequence", http_request("GET", "/api/v1/deferred/orders/billing/-1", kAdmin), 400},
      {"sequence not a number", http_request("GET", "/api/v1/deferred/orders/billing/1e3", kAdmin),
       400},
      {"%FF in a segment", http_request("GET", "/api/v1/deferred/orders%FF/billing/1", kAdmin),
       400},
      {"%FF in a segment, no token",
       http_request("POST", "/api/v1/deferred/orders%FF/billing/1/retry", nullptr), 401},
      {"bad escape", http_request("GET", "/api/v1/deferred/orders%G1/billing/1", kAdmin), 400},
      {"escaped control character",
       http_request("GET", "/api/v1/deferred/orders%0Aaudit/billing/1", kAdmin), 400},
      {"empty topic", http_request("GET", "/api/v1/deferred//billing/1", kAdmin), 400},
      {"cursor ffff", http_request("GET", "/api/v1/deferred?after=ffff", kAdmin), 400},
      {"cursor ffff, no token", http_request("GET", "/api/v1/deferred?after=ffff", nullptr), 401},
      {"cursor without a number", http_request("GET", "/api/v1/deferred?after=0a0a78", kAdmin),
       400},
      {"cursor past int64",
       http_request("GET",
                    "/api/v1/deferred?after=610a620a3939393939393939393939393939393939393939",
                    kAdmin),
       400},
      {"%FF in the query", http_request("GET", "/api/v1/deferred?topic=%FF", kAdmin), 400},
      {"limit past long",
       http_request("GET", "/api/v1/deferred?limit=99999999999999999999999", kAdmin), 400},
      // JSON bodies with values of the wrong type.
      {"reason a number",
       http_request("POST", "/api/v1/deferred/orders/billing/1/dead-letter", kAdmin,
                    R"({"reason": 5})"),
       400},
      {"description a list",
       http_request("POST", "/api/v1/deferred/orders/billing/1/dead-letter", kAdmin,
                    R"({"description": []})"),
       400},
      {"dead-letter body a list",
       http_request("POST", "/api/v1/deferred/orders/billing/1/dead-letter", kAdmin, "[1]"), 400},
      {"dead-letter body not JSON",
       http_request("POST", "/api/v1/deferred/orders/billing/1/dead-letter", kAdmin, "{"), 400},
      {"topic a number",
       http_request("POST", "/api/v1/publish", kAdmin, R"({"topic": 5, "body": {}})"), 400},
      {"subject an object",
       http_request("POST", "/api/v1/publish", kAdmin,
                    R"({"topic": "orders", "body": {}, "subject": {}})"),
       400},
      {"correlation_id a boolean",
       http_request("POST", "/api/v1/publish", kAdmin,
                    R"({"topic": "orders", "body": {}, "correlation_id": true})"),
       400},
      {"publish body nested too deep", http_request("POST", "/api/v1/publish", kAdmin, deep_body),
       400},
      {"publish without a token",
       http_request("POST", "/api/v1/publish", nullptr, R"({"topic": 5})"), 401},
      // Methods and routes.
      {"DELETE on a list", http_request("DELETE", "/api/v1/deferred", kAdmin), 405},
      {"GET on an action", http_request("GET", "/api/v1/deferred/orders/billing/1/retry", kAdmin),
       405},
      {"PUT on /healthz", http_request("PUT", "/healthz", nullptr), 405},
      {"an unknown method", http_request("BREW", "/api/v1/subscriptions", kAdmin), 405},
      {"an unknown route", http_request("GET", "/api/v1/nothing", kAdmin), 404},
      {"an unknown route, no token", http_request("GET", "/api/v1/nothing", nullptr), 401},
      {"an unknown page", http_request("GET", "/nothing", nullptr), 404},
      // What the HTTP layer itself refuses: before the token is looked at.
      {"a body over the limit",
       http_request("POST", "/api/v1/publish", nullptr, {}, false, "Content-Length: 314572800\r\n"),
       413},
      {"a request line over the header limit",
       "GET /" + std::string(20000, 'a') + " HTTP/1.1\r\n\r\n", 414},
      {"a request-target over its limit",
       http_request("GET", "/api/v1/deferred?subject=" + std::string(9000, 'a'), kAdmin), 414},
      {"headers over the limit",
       http_request("GET", "/healthz", nullptr, {}, true,
                    "X-Big: " + std::string(20000, 'a') + "\r\n"),
       431},
      {"a malformed request line", "GARBAGE\r\n\r\n", 400},
      {"a request line without a version", "GET /healthz\r\n\r\n", 400},
      {"a bad Content-Length", "POST /api/v1/publish HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400},
      {"two Content-Lengths",
       "POST /api/v1/publish HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400},
      {"a bad chunk",
       http_request("POST", "/api/v1/publish", kAdmin, "zz\r\n", false,
                    "Transfer-Encoding: chunked\r\n"),
       400},
      {"a NUL in a header", std::string("GET /healthz HTTP/1.1\r\nX-A: a\0b\r\n\r\n", 36), 400},
  };
  for (const auto& c : cases) {
    expect_json_error(raw_request(port, c.request), c.status, c.what);
  }
  auto r = raw_request(port, http_request("DELETE", "/api/v1/deferred", kAdmin));
  EXPECT_EQ(r->headers["allow"], "GET, HEAD");
  r = raw_request(port, http_request("GET", "/api/v1/deferred/orders/billing/1/complete", kAdmin));
  EXPECT_EQ(r->headers["allow"], "POST");
  // The parked message is untouched by all of it.
  EXPECT_EQ(state_of("billing", 1), State::kFailed);
}

TEST_F(AdminTest, NamesInPathsAreComparedCaseInsensitively) {
  start();
  park_one();
  auto [status, m] = get("/api/v1/deferred/ORDERS/Billing/1");
  EXPECT_EQ(status, 200) << m.dump();
  EXPECT_EQ(m["topic"], "orders");
  EXPECT_EQ(m["subscription"], "billing");
  std::tie(status, m) = get("/api/v1/deferred?topic=Orders&subscription=BILLING");
  EXPECT_EQ(status, 200);
  EXPECT_EQ(m["items"].size(), 1u) << m.dump();
  std::tie(status, m) = post("/api/v1/deferred/Orders/BILLING/1/complete");
  EXPECT_EQ(status, 200) << m.dump();
  EXPECT_EQ(state_of("billing", 1), State::kCompleted);
  std::tie(status, m) = post("/api/v1/publish", R"({"topic": "ORDERS", "body": {"subject": "X"}})");
  EXPECT_EQ(status, 202) << m.dump();
  EXPECT_EQ(m["topic"], "orders");
}

TEST_F(AdminTest, ABodyNestedTooDeepIsShownAsTextNeverWalked) {
  start();
  // The ledger holds what a poison message brought; the API must render it without recursion.
  metro::ledger::DeferredMessage row;
  row.key = {"orders", "billing", 7};
  row.subject = "Orders/Created";
  row.state = State::kFailed;
  row.body = R"({"subject":"Orders/Created","x":)" + std::string(100000, '[') +
             std::string(100000, ']') + "}";
  service_->ledger().record(row);
  auto [status, m] = get("/api/v1/deferred/orders/billing/7");
  ASSERT_EQ(status, 200);
  ASSERT_TRUE(m["body"].is_string());
  EXPECT_EQ(m["body"].get<std::string>(), row.body);
  // At the bound a body is still JSON; one level more is text.
  row.key.sequence_number = 8;
  row.body = std::string(128, '[') + std::string(128, ']');
  service_->ledger().record(row);
  EXPECT_TRUE(get("/api/v1/deferred/orders/billing/8").second["body"].is_array());
  row.key.sequence_number = 9;
  row.body = std::string(129, '[') + std::string(129, ']');
  service_->ledger().record(row);
  EXPECT_TRUE(get("/api/v1/deferred/orders/billing/9").second["body"].is_string());
#ifdef METRO_BIN
  auto [code, out] = metro::test::run_command(
      std::string(METRO_BIN) + " deferred show orders billing 7 --url http://127.0.0.1:" +
      std::to_string(api_->port()) + " --token " + kAdmin);
  EXPECT_EQ(code, 0) << out.substr(0, 2000);
  EXPECT_NE(out.find("body (shown as text: nested too deep to format):"), std::string::npos)
      << out.substr(0, 2000);
#endif
}

TEST_F(AdminTest, ActionsThatCannotFinishInTimeAnswer202Or504) {
  metro::admin::Limits limits;
  limits.action_deadline = 1s;
  limits.request_deadline = 3s;
  operation_timeout_ = 2s;  // So that the settlements given up on at the end fail quickly.
  start(kTokens, limits);
  park_one();
  publish("Orders/Created");
  ASSERT_TRUE(wait_until([&] { return state_of("billing", 2) == State::kFailed; }));
  bus_->stop();  // Service Bus is gone: no settlement can be confirmed.
  auto started = std::chrono::steady_clock::now();
  auto [status, m] = post("/api/v1/deferred/orders/billing/1/complete");
  EXPECT_EQ(status, 202) << m.dump();
  EXPECT_EQ(m["sequence_number"], 1);
  std::tie(status, m) = post("/api/v1/deferred/orders/billing/2/dead-letter");
  EXPECT_EQ(status, 202) << m.dump();
  EXPECT_EQ(m["sequence_number"], 2);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 60s);  // Not the settlement's 2 minutes.
  EXPECT_EQ(http_->Get("/healthz")->status, 200);
  EXPECT_NE(audit_log().find("action=complete message=orders/billing#1 outcome=\"accepted: under "
                             "way\""),
            std::string::npos)
      << audit_log();
  EXPECT_NE(audit_log().find("action=dead-letter message=orders/billing#2 outcome=\"accepted: "
                             "under way\""),
            std::string::npos)
      << audit_log();
  // The service's stop gives each settlement a last try; the dead-letter call then returns.
  service_->stop(0ms);
}

TEST_F(AdminTest, AuditValuesAreQuotedSoNoneCanForgeAField) {
  start();
  auto r = raw_request(api_->port(),
                       http_request("POST", "/api/v1/deferred/orders%20outcome=ok/billing/1/retry",
                                    kAdmin, {}, false));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  auto log = audit_log();
  EXPECT_NE(log.find("action=retry message=\"orders outcome=ok/billing#1\" outcome=\"error 404: "),
            std::string::npos)
      << log;
}

/// The README's curl examples, as the README spells them (with METRO_URL and METRO_TOKEN set).
std::vector<std::string> readme_curl_examples() {
  std::ifstream file(std::string(METRO_SOURCE_DIR) + "/README.md");
  std::vector<std::string> commands;
  std::string line;
  std::string command;
  while (std::getline(file, line)) {
    if (command.empty() && line.rfind("curl ", 0) != 0) continue;
    command += line;
    if (!command.empty() && command.back() == '\\') {
      command.pop_back();
      continue;
    }
    commands.push_back(command);
    command.clear();
  }
  return commands;
}

TEST_F(AdminTest, TheReadmeCurlExamplesWork) {
  start();
  park_one();
  auto examples = readme_curl_examples();
  ASSERT_EQ(examples.size(), 2u) << "README.md's API section shows a list and a retry";
  auto env = "export METRO_URL=http://127.0.0.1:" + std::to_string(api_->port()) +
             " METRO_TOKEN=" + kAdmin + "; ";
  auto [code, out] = metro::test::run_command(env + examples[0]);
  ASSERT_EQ(code, 0) << examples[0] << "\n" << out;
  auto list = json::parse(out, nullptr, false);
  ASSERT_TRUE(list.is_object()) << out;
  ASSERT_EQ(list["items"].size(), 1u) << out;
  EXPECT_EQ(list["items"][0]["state"], "failed");
  broken_ = false;
  std::tie(code, out) = metro::test::run_command(env + examples[1]);
  ASSERT_EQ(code, 0) << examples[1] << "\n" << out;
  auto retried = json::parse(out, nullptr, false);
  ASSERT_TRUE(retried.is_object()) << out;
  EXPECT_FALSE(retried.contains("error")) << out;
  EXPECT_EQ(retried["sequence_number"], 1);
  EXPECT_TRUE(wait_until([&] { return state_of("billing", 1) == State::kCompleted; }));
}

#ifdef METRO_BIN
TEST_F(AdminTest, TheCliAgainstARunningMetro) {
  start();
  park_one();
  auto cli = std::string(METRO_BIN) +
             " deferred --url http://127.0.0.1:" + std::to_string(api_->port()) + " --token " +
             kAdmin + " ";
  auto [code, out] = metro::test::run_command(cli + "list --state failed");
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("SEQ  TOPIC/SUBSCRIPTION  SUBJECT         STATE   AGE"), std::string::npos)
      << out;
  EXPECT_NE(out.find("1    orders/billing      Orders/Created  failed"), std::string::npos) << out;
  EXPECT_NE(out.find("flaky: the billing system is down"), std::string::npos) << out;

  std::tie(code, out) = metro::test::run_command(cli + "show orders billing 1");
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("correlation id  order-7"), std::string::npos) << out;
  EXPECT_NE(out.find("\"subject\": \"Orders/Created\""), std::string::npos) << out;
  EXPECT_NE(out.find("flaky    2        failed"), std::string::npos) << out;

  std::tie(code, out) = metro::test::run_command(cli + "--json list --subscription billing");
  EXPECT_EQ(code, 0);
  EXPECT_EQ(json::parse(out)["items"][0]["state"], "failed");
  // Flags after the subcommand, and --url/--token after it too.
  auto url = " --url http://127.0.0.1:" + std::to_string(api_->port()) + " --token " + kAdmin;
  std::tie(code, out) = metro::test::run_command(
      std::string(METRO_BIN) + " deferred list --subscription billing --json" + url);
  EXPECT_EQ(code, 0) << out;
  EXPECT_EQ(json::parse(out, nullptr, false)["items"][0]["state"], "failed") << out;
  std::tie(code, out) = metro::test::run_command(
      std::string(METRO_BIN) + " deferred show orders billing 1" + url + " --json");
  EXPECT_EQ(code, 0) << out;
  EXPECT_EQ(json::parse(out, nullptr, false)["correlation_id"], "order-7") << out;
  std::tie(code, out) =
      metro::test::run_command(std::string(METRO_BIN) + " --log-level warn deferred show --json" +
                               url + " orders billing 1");
  EXPECT_EQ(code, 0) << out;
  EXPECT_EQ(json::parse(out, nullptr, false)["sequence_number"], 1) << out;

  broken_ = false;
  std::tie(code, out) = metro::test::run_command(cli + "retry orders billing 1");
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("retry: ok"), std::string::npos);
  ASSERT_TRUE(wait_until([&] { return state_of("billing", 1) == State::kCompleted; }));
  std::tie(code, out) = metro::test::run_command(cli + "retry orders billing 1");
  EXPECT_EQ(code, 1);
  EXPECT_EQ(out, "metro deferred retry: 409: orders/billing#1 is already completed\n");
  std::tie(code, out) = metro::test::run_command(cli + "show orders billing 77");
  EXPECT_EQ(code, 1);
  EXPECT_EQ(out, "metro deferred show: 404: no deferred message orders/billing#77 is known\n");
  std::tie(code, out) = metro::test::run_command(
      std::string(METRO_BIN) + " deferred --url http://127.0.0.1:" + std::to_string(api_->port()) +
      " complete orders billing 1");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("401: this API needs a bearer token"), std::string::npos) << out;
  std::tie(code, out) =
      metro::test::run_command(std::string(METRO_BIN) + " deferred --url http://127.0.0.1:1 list");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("cannot reach http://127.0.0.1:1"), std::string::npos) << out;
}
#endif

}  // namespace
