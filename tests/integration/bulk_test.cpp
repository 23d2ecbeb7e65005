// Failure groups, bulk jobs and trace context, end to end: the service on the in-process emulator,
// a real SQLite ledger and the admin API over HTTP. 500 messages parked by a handler failing in
// two ways fall into two groups; one group is retried in bulk while fresh traffic flows (its
// throughput measured); a job goes on after a stop and a new start; cancel stops one; viewers
// cannot act; every handler kind gets the message's trace context.

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <regex>
#include <set>
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

#include "../support/test_support.hpp"

namespace {

using metro::test::wait_until;
using nlohmann::json;
using namespace std::chrono_literals;
using metro::ledger::State;

constexpr const char* kAdmin = "bulk-admin";
constexpr const char* kViewer = "bulk-viewer";
constexpr const char* kTrace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

class BulkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("metro-bulk-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    metro::emulator::EmulatorOptions options;
    options.port = 0;
    metro::emulator::TopicOptions topic{"orders", {}, {}};
    topic.subscriptions.push_back({"billing", {}, {}});
    options.bus.topics.push_back(topic);
    bus_ = std::make_unique<metro::emulator::Emulator>(options);
    bus_->start();
    log_ = std::make_shared<spdlog::sinks::ostream_sink_mt>(log_text_);
    spdlog::default_logger()->sinks().push_back(log_);
  }

  void TearDown() override {
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), log_), sinks.end());
    stop();
    bus_.reset();
    std::filesystem::remove_all(dir_);
  }

  /// The service (handlers given as TOML) and the admin API over HTTP.
  void start(const std::string& handlers, double bulk_rate = 100) {
    std::string text = "[metro]\nworkers = 4\nledger = \"sqlite://" +
                       (dir_ / "ledger.db").string() +
                       "\"\n[[subscriptions]]\ntopic_name = \"orders\"\n"
                       "subscription_name = \"billing\"\nconnection_string = \"" +
                       bus_->connection_string() + "\"\n" + handlers +
                       "\n[admin]\nlisten = \"127.0.0.1:0\"\ntokens = [{ name = \"ops\", token = "
                       "\"bulk-admin\", role = \"admin\" }, { name = \"wall\", token = "
                       "\"bulk-viewer\", role = \"viewer\" }]\n";
    auto config = metro::config::parse_config(text, "bulk-test.toml");
    metro::dispatch::ServiceOptions options;
    options.bulk_rate = bulk_rate;
    options.functions = {{"orders", [this](const metro::dispatch::Task& task) { handle(task); }}};
    service_ = std::make_unique<metro::dispatch::Service>(config, options);
    service_->start();
    api_ = std::make_unique<metro::admin::Server>(*service_, config.admin);
    api_->start();
    http_ = std::make_unique<httplib::Client>("127.0.0.1", api_->port());
    http_->set_read_timeout(30s);
  }

  void stop() {
    api_.reset();
    if (service_) service_->stop(5s);
    service_.reset();
  }

  /// The C++ handler: `kind` A fails "order <id> not found in '<warehouse>'" until fixed, B fails
  /// "timed out after <n> ms talking to 10.0.0.<n>", live messages succeed (and are timed).
  void handle(const metro::dispatch::Task& task) {
    auto body = json::parse(task.body);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      traces_.push_back(task.trace_parent);
    }
    auto kind = body.value("kind", "");
    auto n = body.value("n", 0);
    if (kind == "A" && !fixed_) {
      throw std::runtime_error("order " + std::to_string(10000 + n * 37) +
                               " not found in 'warehouse-" + std::to_string(n % 7) + "'");
    }
    if (kind == "B") {
      throw std::runtime_error("timed out after " + std::to_string(1000 + n) +
                               " ms talking to 10.0.0." + std::to_string(n % 250));
    }
    if (kind == "live") {
      std::lock_guard<std::mutex> lock(mutex_);
      live_done_.push_back(std::chrono::steady_clock::now());
    }
  }

  void publish(const std::string& kind, int count, int first = 0) {
    metro::sb::Client client(bus_->connection_string());
    auto sender = client.create_sender("orders");
    std::vector<metro::sb::Message> batch;
    for (int i = 0; i < count; ++i) {
      metro::sb::Message m;
      m.body = json{{"subject", "Orders/Created"}, {"kind", kind}, {"n", first + i}}.dump();
      batch.push_back(std::move(m));
      if (batch.size() == 100 || i + 1 == count) {
        sender.send(batch);
        batch.clear();
      }
    }
  }

  std::size_t in_state(State state) { return service_->ledger().counts()[state]; }

  httplib::Headers auth(const char* token) {
    return {{"Authorization", std::string("Bearer ") + token}};
  }
  std::pair<int, json> call(const std::string& method, const std::string& path,
                            const json& body = nullptr, const char* token = kAdmin) {
    httplib::Request request;
    request.method = method;
    request.path = path;
    request.headers = auth(token);
    if (!body.is_null()) {
      request.body = body.dump();
      request.set_header("Content-Type", "application/json");
    }
    auto r = http_->send(request);
    if (!r) return {0, {}};
    return {r->status, json::parse(r->body, nullptr, false)};
  }
  json job(const std::string& id) { return call("GET", "/api/v1/jobs/" + id).second; }
  bool finished(const std::string& id) {
    auto state = job(id).value("state", "");
    return state == "completed" || state == "cancelled" || state == "failed";
  }

  std::string log() {
    std::lock_guard<std::mutex> lock(mutex_);
    return log_text_.str();
  }

  std::filesystem::path dir_;
  std::unique_ptr<metro::emulator::Emulator> bus_;
  std::unique_ptr<metro::dispatch::Service> service_;
  std::unique_ptr<metro::admin::Server> api_;
  std::unique_ptr<httplib::Client> http_;
  std::atomic<bool> fixed_{false};
  std::mutex mutex_;
  std::vector<std::chrono::steady_clock::time_point> live_done_;
  std::vector<std::string> traces_;
  std::ostringstream log_text_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> log_;
};

constexpr const char* kOrders =
    "[[subscriptions.handlers]]\nsubject = \"Orders/**\"\nglob = true\nhandler = \"orders\"\n"
    "max_attempts = 1\n";

TEST_F(BulkTest, FiveHundredParkedFallIntoTwoGroupsAndOneIsRetriedWhileTrafficFlows) {
  start(kOrders, 100);
  publish("A", 250);
  publish("B", 250, 250);
  ASSERT_TRUE(wait_until([&] { return in_state(State::kFailed) == 500; }, 120s))
      << in_state(State::kFailed);

  auto [status, groups] = call("GET", "/api/v1/failures");
  ASSERT_EQ(status, 200) << groups.dump();
  ASSERT_EQ(groups["items"].size(), 2u) << groups.dump(2);
  std::string group_a, group_b;
  for (const auto& g : groups["items"]) {
    EXPECT_EQ(g["count"], 250);
    EXPECT_EQ(g["failed"], 250);
    EXPECT_EQ(g["handler"], "orders");
    EXPECT_EQ(g["id"].get<std::string>().size(), 16u);
    auto error = g["error"].get<std::string>();
    if (error.rfind("order <n> not found", 0) == 0) {
      EXPECT_EQ(error, "order <n> not found in '<str>'");
      group_a = g["id"];
    } else {
      EXPECT_EQ(error, "timed out after <n> ms talking to <n>.<n>.<n>.<n>");
      group_b = g["id"];
    }
  }
  ASSERT_FALSE(group_a.empty());
  ASSERT_FALSE(group_b.empty());

  auto [dry_status, dry] =
      call("POST", "/api/v1/deferred/retry", {{"state", "failed"}, {"dry_run", true}});
  EXPECT_EQ(dry_status, 200) << dry.dump();
  EXPECT_EQ(dry["count"], 500);
  EXPECT_EQ(in_state(State::kFailed), 500u);  // A dry run does nothing.
  auto [listed_status, listed] = call("GET", "/api/v1/deferred?limit=1000&group=" + group_a);
  EXPECT_EQ(listed["items"].size(), 250u);

  // Live traffic before and during the job: 300 messages a second offered, in batches of 30.
  fixed_ = true;
  std::atomic<bool> publishing{true};
  std::atomic<int> offered{0};
  std::thread publisher([&] {
    auto next = std::chrono::steady_clock::now();
    while (publishing) {
      publish("live", 30, 100000 + offered.fetch_add(30));
      next += 100ms;
      std::this_thread::sleep_until(next);
    }
  });
  auto handled_between = [&](auto from, auto to) {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<double>(std::count_if(live_done_.begin(), live_done_.end(),
                                             [&](auto t) { return t >= from && t < to; }));
  };
  std::this_thread::sleep_for(1s);  // Settle.
  auto before_start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(3s);
  auto before_end = std::chrono::steady_clock::now();

  auto [job_status, created] = call("POST", "/api/v1/deferred/retry", {{"group", group_a}});
  ASSERT_EQ(job_status, 202) << created.dump();
  auto id = created["job"]["id"].get<std::string>();
  EXPECT_EQ(created["job"]["total"], 250);
  auto job_start = std::chrono::steady_clock::now();
  ASSERT_TRUE(wait_until([&] { return finished(id); }, 120s)) << job(id).dump();
  auto job_end = std::chrono::steady_clock::now();
  publishing = false;
  publisher.join();

  auto done = job(id);
  EXPECT_EQ(done["state"], "completed") << done.dump();
  EXPECT_EQ(done["done"], 250);
  EXPECT_EQ(done["failed"], 0);
  const auto live = static_cast<std::size_t>(offered.load());
  ASSERT_TRUE(wait_until([&] { return in_state(State::kCompleted) == 250 + live; }, 60s))
      << in_state(State::kCompleted) << " of " << 250 + offered;
  EXPECT_EQ(in_state(State::kFailed), 250u);  // Group B stays parked.
  auto [after_status, after] = call("GET", "/api/v1/failures");
  ASSERT_EQ(after["items"].size(), 1u);
  EXPECT_EQ(after["items"][0]["id"], group_b);

  auto seconds = [](auto d) { return std::chrono::duration<double>(d).count(); };
  double live_before =
      handled_between(before_start, before_end) / seconds(before_end - before_start);
  double live_during = handled_between(job_start, job_end) / seconds(job_end - job_start);
  double job_rate = 250 / seconds(job_end - job_start);
  std::cout << "bulk retry of 250 messages: " << seconds(job_end - job_start) << " s (" << job_rate
            << " messages/s); live traffic (300/s offered): " << live_before
            << " messages/s before, " << live_during << " messages/s during the job\n";
  EXPECT_GT(live_during, 0);  // Fresh traffic kept flowing (the figures go to the report).

  auto text = log();
  EXPECT_NE(text.find("audit: token=ops action=bulk-retry job=" + id), std::string::npos);
  EXPECT_NE(text.find("outcome=ok job=" + id), std::string::npos);
  EXPECT_NE(text.find("outcome=\"completed: 250 done, 0 failed of 250\""), std::string::npos);
}

TEST_F(BulkTest, AJobGoesOnAfterAStopAndANewStartThenFinishes) {
  start(kOrders, 20);  // 20 messages a second: the stop comes mid-way.
  publish("A", 60);
  ASSERT_TRUE(wait_until([&] { return in_state(State::kFailed) == 60; }, 60s));
  fixed_ = true;
  auto [status, created] = call("POST", "/api/v1/deferred/retry", {{"state", "failed"}});
  ASSERT_EQ(status, 202);
  auto id = created["job"]["id"].get<std::string>();
  ASSERT_TRUE(wait_until([&] { return job(id).value("done", 0) >= 10; }, 30s));
  stop();  // What SIGTERM does: Service::stop with its grace.
  auto row = metro::ledger::open_ledger("sqlite://" + (dir_ / "ledger.db").string())->find_job(id);
  ASSERT_TRUE(row);
  EXPECT_EQ(row->state, metro::ledger::JobState::kRunning);
  EXPECT_LT(row->done, 60u);

  start(kOrders, 200);
  ASSERT_TRUE(wait_until([&] { return finished(id); }, 60s)) << job(id).dump();
  auto done = job(id);
  EXPECT_EQ(done["state"], "completed");
  EXPECT_EQ(done["done"], 60);
  ASSERT_TRUE(wait_until([&] { return in_state(State::kCompleted) == 60; }, 60s));
}

// A job stopped before Service Bus confirmed a completion or dead-letter acts on that message
// again at the next start; finding it settled already as asked is no failure.
TEST_F(BulkTest, AMessageAlreadySettledAsTheJobAsksCountsAsDone) {
  const std::pair<metro::ledger::JobAction, State> kCases[] = {
      {metro::ledger::JobAction::kComplete, State::kCompleted},
      {metro::ledger::JobAction::kDeadLetter, State::kDeadLettered}};
  int first = 0;
  for (const auto& settle : kCases) {
    const auto action = settle.first;
    const auto settled = settle.second;  // Captured below: a structured binding cannot be.
    SCOPED_TRACE(std::string(to_string(action)));
    start(kOrders);
    publish("B", 4, first);
    first += 4;
    ASSERT_TRUE(wait_until([&] { return in_state(State::kFailed) == 4; }, 60s));
    stop();
    std::string id;
    {
      auto ledger = metro::ledger::open_ledger("sqlite://" + (dir_ / "ledger.db").string());
      metro::ledger::Query failed;
      failed.state = State::kFailed;
      auto parked = ledger->list(failed).items;
      ASSERT_EQ(parked.size(), 4u);
      metro::ledger::Job job;
      job.id = "000000000000000" + std::to_string(first);  // 16 hex digits.
      job.action = action;
      job.reason = "Obsolete";
      job.created_by = "ops";
      id = ledger->create_job(job, failed).id;
      // Settled before the stop, its outcome not recorded.
      ledger->set_state(parked[0].key, settled);
    }
    start(kOrders);
    ASSERT_TRUE(wait_until([&] { return finished(id); }, 60s)) << job(id).dump();
    auto done = job(id);
    EXPECT_EQ(done["state"], "completed");
    EXPECT_EQ(done["done"], 4) << done.dump();
    EXPECT_EQ(done["failed"], 0) << done.dump();
    ASSERT_TRUE(wait_until([&] { return in_state(settled) == 4; }, 60s));
    stop();
  }
}

TEST_F(BulkTest, CancelStopsAJobAndLeavesTheRestAsTheyWere) {
  start(kOrders, 10);
  publish("B", 100);
  ASSERT_TRUE(wait_until([&] { return in_state(State::kFailed) == 100; }, 60s));
  auto [status, created] =
      call("POST", "/api/v1/deferred/dead-letter", {{"state", "failed"}, {"reason", "Obsolete"}});
  ASSERT_EQ(status, 202) << created.dump();
  auto id = created["job"]["id"].get<std::string>();
  ASSERT_TRUE(wait_until([&] { return job(id).value("done", 0) >= 3; }, 30s));
  auto [cancel_status, cancelled] = call("DELETE", "/api/v1/jobs/" + id);
  EXPECT_EQ(cancel_status, 200) << cancelled.dump();
  EXPECT_EQ(cancelled["state"], "cancelled");
  EXPECT_EQ(cancelled["error"], "cancelled by ops");
  auto at_cancel = job(id)["done"].get<int>();
  std::this_thread::sleep_for(1s);
  auto later = job(id);
  EXPECT_EQ(later["state"], "cancelled");
  // At most the rest of the batch under way (a second's worth: 10) is still acted on.
  EXPECT_LE(later["done"].get<int>(), at_cancel + 10);
  EXPECT_EQ(in_state(State::kDeadLettered) + in_state(State::kFailed), 100u);
  EXPECT_GE(in_state(State::kFailed), 70u);
  auto [again, conflict] = call("DELETE", "/api/v1/jobs/" + id);
  EXPECT_EQ(again, 409) << conflict.dump();
  EXPECT_EQ(call("DELETE", "/api/v1/jobs/ffffffffffffffff").first, 404);
  auto [list_status, jobs] = call("GET", "/api/v1/jobs");
  ASSERT_EQ(jobs["items"].size(), 1u);
  EXPECT_EQ(jobs["items"][0]["reason"], "Obsolete");
}

TEST_F(BulkTest, ViewerTokensGet403OnEveryBulkAction) {
  start(kOrders);
  publish("B", 3);
  ASSERT_TRUE(wait_until([&] { return in_state(State::kFailed) == 3; }, 30s));
  for (const char* action : {"retry", "complete", "dead-letter"}) {
    for (bool dry_run : {false, true}) {
      auto [status, body] = call("POST", std::string("/api/v1/deferred/") + action,
                                 {{"state", "failed"}, {"dry_run", dry_run}}, kViewer);
      EXPECT_EQ(status, 403) << action << ' ' << body.dump();
    }
  }
  auto [created_status, created] = call("POST", "/api/v1/deferred/retry", {{"state", "failed"}});
  ASSERT_EQ(created_status, 202);
  auto id = created["job"]["id"].get<std::string>();
  EXPECT_EQ(call("DELETE", "/api/v1/jobs/" + id, nullptr, kViewer).first, 403);
  // Reading is a viewer's right.
  EXPECT_EQ(call("GET", "/api/v1/jobs/" + id, nullptr, kViewer).first, 200);
  EXPECT_EQ(call("GET", "/api/v1/failures", nullptr, kViewer).first, 200);
  EXPECT_EQ(call("POST", "/api/v1/deferred/retry", {{"state", "running"}}).first, 400);
  EXPECT_EQ(call("POST", "/api/v1/deferred/retry", {{"stat", "failed"}}).first, 400);
  EXPECT_EQ(call("POST", "/api/v1/deferred/retry", {{"group", "nothex"}}).first, 400);
  EXPECT_EQ(call("PUT", "/api/v1/jobs/" + id).first, 405);
  EXPECT_EQ(call("POST", "/api/v1/deferred/retry", {{"state", "failed"}}, "nobody").first, 401);
  auto text = log();
  EXPECT_NE(text.find("audit: token=wall action=bulk-retry message=- outcome=\"denied: viewer\""),
            std::string::npos);
  EXPECT_NE(text.find("audit: token=wall action=cancel-job message=job:" + id +
                      " outcome=\"denied: viewer\""),
            std::string::npos);
}

TEST_F(BulkTest, MetricsShowGroupsAndJobsAndWholeAges) {
  {
    // A message parked 20 days ago: its age is over a million seconds.
    auto ledger = metro::ledger::open_ledger("sqlite://" + (dir_ / "ledger.db").string());
    metro::ledger::DeferredMessage m;
    m.key = {"orders", "billing", 9001};
    m.subject = "Orders/Old";
    m.body = "{}";
    m.state = State::kFailed;
    m.created = std::chrono::system_clock::now() - std::chrono::hours(24 * 20);
    ledger->record(m);
  }
  start(kOrders);
  publish("B", 3);
  ASSERT_TRUE(wait_until([&] { return in_state(State::kFailed) == 4; }, 30s));
  auto [status, created] =
      call("POST", "/api/v1/deferred/retry", {{"state", "failed"}, {"subject", "Orders/Created"}});
  ASSERT_EQ(status, 202);
  auto id = created["job"]["id"].get<std::string>();
  EXPECT_EQ(created["job"]["total"], 3);
  ASSERT_TRUE(wait_until([&] { return finished(id); }, 30s));
  auto metrics = http_->Get("/metrics", auth(kViewer))->body;
  // Written whole: six significant digits would print 1.728e+06.
  EXPECT_TRUE(std::regex_search(
      metrics,
      std::regex(
          R"(metro_oldest_deferred_age_seconds\{topic="orders",subscription="billing"\} 17[0-9]{5}(\.[0-9]+)?\n)")))
      << metrics;
  for (const char* line : {"# TYPE metro_failure_groups gauge", "metro_jobs{state=\"completed\"} 1",
                           "metro_jobs{state=\"running\"} 0", "metro_failure_group_messages{"}) {
    EXPECT_NE(metrics.find(line), std::string::npos) << line << "\n" << metrics;
  }
}

TEST_F(BulkTest, TraceContextReachesEveryHandlerKindAndTheLogLines) {
  // An http handler that keeps the header and the body's trace_parent.
  httplib::Server server;
  std::mutex seen_mutex;
  std::vector<std::pair<std::string, std::string>> seen;
  server.Post("/hook", [&](const httplib::Request& request, httplib::Response& response) {
    std::lock_guard<std::mutex> lock(seen_mutex);
    seen.emplace_back(request.get_header_value("traceparent"),
                      json::parse(request.body).value("trace_parent", ""));
    response.status = 200;
  });
  int port = server.bind_to_any_port("127.0.0.1");
  std::thread serving([&] { server.listen_after_bind(); });
  auto script = dir_ / "trace.sh";
  {
    std::ofstream out(script);
    out << "#!/bin/sh\nbody=$(cat)\nprintf '%s %s\\n' \"$TRACEPARENT\" \"$(printf '%s' \"$body\" "
           "| sed 's/.*\"trace_parent\":\"\\([^\"]*\\)\".*/\\1/')\" >> "
        << (dir_ / "exec-traces").string() << "\n";
  }
  std::filesystem::permissions(script, std::filesystem::perms::owner_all);
  start(std::string(kOrders) +
        "[[subscriptions.handlers]]\nsubject = \"Orders/**\"\nglob = "
        "true\nexec = [\"" +
        script.string() +
        "\"]\n[[subscriptions.handlers]]\nsubject = \"Orders/**\"\nglob = true\nhttp = "
        "\"http://127.0.0.1:" +
        std::to_string(port) + "/hook\"\n");

  metro::sb::Client client(bus_->connection_string());
  auto sender = client.create_sender("orders");
  auto send = [&](const std::string& name, const std::string& value) {
    metro::sb::Message m;
    m.body = json{{"subject", "Orders/Created"}, {"kind", "live"}}.dump();
    if (!name.empty()) m.application_properties[name] = value;
    sender.send(m);
  };
  send("traceparent", kTrace);
  send("Diagnostic-Id", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  send("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01\nforged");
  send("", "");
  ASSERT_TRUE(wait_until([&] { return in_state(State::kCompleted) == 4; }, 30s));

  std::vector<std::string> rows;
  for (std::int64_t seq = 1; seq <= 4; ++seq) {
    rows.push_back(service_->ledger().find({"orders", "billing", seq})->trace_parent);
  }
  // The publisher's trace, continued under a span of metro's own.
  EXPECT_EQ(rows[0].substr(0, 36), std::string(kTrace).substr(0, 36));
  EXPECT_NE(rows[0], kTrace);
  EXPECT_EQ(rows[0].size(), 55u);
  EXPECT_EQ(rows[1].substr(0, 36), "00-0af7651916cd43dd8448eb211c80319c-");
  // Malformed or none: a new trace.
  EXPECT_NE(rows[2].substr(3, 32), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(rows[2].size(), 55u);
  EXPECT_EQ(rows[3].size(), 55u);

  std::set<std::string> expected(rows.begin(), rows.end());
  {
    std::lock_guard<std::mutex> lock(mutex_);
    EXPECT_EQ(std::set<std::string>(traces_.begin(), traces_.end()), expected);  // C++ Task
  }
  {
    std::lock_guard<std::mutex> lock(seen_mutex);
    ASSERT_EQ(seen.size(), 4u);
    for (const auto& [header, body] : seen) {
      EXPECT_EQ(header, body);  // http: the header and the task JSON
      EXPECT_EQ(expected.count(header), 1u) << header;
    }
  }
  std::ifstream exec_traces(dir_ / "exec-traces");
  std::string env, in_json;
  int lines = 0;
  while (exec_traces >> env >> in_json) {
    ++lines;
    EXPECT_EQ(env, in_json);  // exec: TRACEPARENT and the task JSON
    EXPECT_EQ(expected.count(env), 1u) << env;
  }
  EXPECT_EQ(lines, 4);

  // The log lines about a run carry the trace id; a malformed value is never logged.
  auto api_row = call("GET", "/api/v1/deferred/orders/billing/1").second;
  EXPECT_EQ(api_row["trace_parent"], rows[0]);
  server.stop();
  serving.join();
  stop();
  auto text = log();
  EXPECT_EQ(text.find("4BF92F"), std::string::npos);
  EXPECT_EQ(text.find("forged"), std::string::npos);
  // A failing run is logged with its trace.
  fixed_ = false;
  start(kOrders);
  metro::sb::Message failing;
  failing.body = json{{"subject", "Orders/Created"}, {"kind", "A"}, {"n", 1}}.dump();
  failing.application_properties["traceparent"] = kTrace;
  sender.send(failing);
  ASSERT_TRUE(wait_until([&] { return in_state(State::kFailed) == 1; }, 30s));
  EXPECT_NE(log().find("trace=4bf92f3577b34da6a3ce929d0e0e4736: orders attempt 1 failed"),
            std::string::npos)
      << log();
}

}  // namespace
