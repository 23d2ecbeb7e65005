// Faults at the admin API of a real `metro run --emulator` process: slow, idle and trickling
// clients, bodies of 300 MB, a corpus of hostile requests, values that try to forge log lines.
// Each scenario states what must hold throughout: metro does not crash, its memory stays bounded
// (VmRSS), /healthz and /readyz answer within a deadline, and every error is the documented JSON.
//
// METRO_BIN (the environment variable) runs another binary, e.g. an older build, to see these
// fail there.

#include <algorithm>
#include <atomic>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <sstream>
#include <thread>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "../support/raw_http.hpp"
#include "../support/test_support.hpp"

extern char** environ;

namespace {

using namespace std::chrono_literals;
using metro::test::raw_request;
using metro::test::RawConnection;
using metro::test::RawResponse;
using metro::test::wait_until;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kAdmin = "faults-admin-token";
/// How long a health or readiness check may take while metro is under these loads. Generous:
/// the machine is shared; an outage (what this suite looks for) lasts as long as the load does.
constexpr auto kHealthDeadline = 5s;
/// How much metro's resident memory may grow over its size after start-up, at any moment.
constexpr long kRssGrowthKib = 64 * 1024;

std::string metro_binary() {
  const char* env = std::getenv("METRO_BIN");
  return env != nullptr && *env != '\0' ? env : METRO_BIN;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

/// The last 3,000 bytes of `text`, for failure messages.
std::string clipped_tail(const std::string& text) {
  return text.size() <= 3000 ? text : "…" + text.substr(text.size() - 3000);
}

std::string http_request(const std::string& method, const std::string& target, const char* token,
                         const std::string& body = {}, const std::string& extra_headers = {}) {
  std::string text = method + " " + target + " HTTP/1.1\r\nHost: metro\r\n";
  if (token != nullptr) text += std::string("Authorization: Bearer ") + token + "\r\n";
  if (!body.empty()) text += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  return text + extra_headers + "\r\n" + body;
}

/// `metro run --emulator` on free ports, its stdout and stderr in files, stopped with SIGTERM.
class Metro {
 public:
  /// `log_format` is text, json, or journal (text logs with stderr named the journal, as
  /// systemd does with JOURNAL_STREAM).
  explicit Metro(const std::string& log_format = "text") {
    dir_ = std::filesystem::temp_directory_path() /
           ("metro-faults-" + std::to_string(::getpid()) + "-" + std::to_string(++count_));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    auto handler = dir_ / "fail.sh";
    { std::ofstream(handler) << "#!/bin/sh\ncat >/dev/null\necho 'not today' >&2\nexit 1\n"; }
    std::filesystem::permissions(handler, std::filesystem::perms::owner_all);
    std::ofstream(dir_ / "metro.toml")
        << "[metro]\nworkers = 2\nledger = \"sqlite://" << (dir_ / "ledger.db").string()
        << "\"\n\n[[subscriptions]]\ntopic_name = \"orders\"\nsubscription_name = \"billing\"\n"
        << "connection_string = \"Endpoint=sb://localhost;SharedAccessKeyName="
        << "RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true\"\n"
        << "  [[subscriptions.handlers]]\n  subject = \"Orders/**\"\n  glob = true\n"
        << "  exec = [\"" << handler.string() << "\"]\n  max_attempts = 1\n\n"
        << "[admin]\nlisten = \"127.0.0.1:0\"\ntokens = [{ name = \"ops\", token = \"" << kAdmin
        << "\", role = \"admin\" }]\n";

    auto binary = metro_binary();
    auto config = (dir_ / "metro.toml").string();
    const bool journal = log_format == "journal";
    std::vector<std::string> args = {binary,       "--log-format",    journal ? "text" : log_format,
                                     "run",        "--config",        config,
                                     "--emulator", "--emulator-port", "0"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::string_view(*e).rfind("JOURNAL_STREAM=", 0) != 0) env.emplace_back(*e);
    }
    if (journal) {
      std::ofstream(dir_ / "stderr").flush();  // The file the child's stderr will be.
      struct stat st {};
      ::stat((dir_ / "stderr").c_str(), &st);
      env.push_back("JOURNAL_STREAM=" + std::to_string(st.st_dev) + ":" +
                    std::to_string(st.st_ino));
    }
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, (dir_ / "stdout").c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, (dir_ / "stderr").c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int error = posix_spawn(&pid_, binary.c_str(), &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    if (error != 0) {
      pid_ = -1;
      return;
    }
    bool running = wait_until(
        [&] { return stdout_text().find("metro running") != std::string::npos || !alive(); }, 60s);
    auto out = stdout_text();
    auto at = out.find("metro admin listening: http://127.0.0.1:");
    if (!running || at == std::string::npos || !alive()) return;
    port_ = std::atoi(out.c_str() + at + std::strlen("metro admin listening: http://127.0.0.1:"));
    baseline_rss_kib_ = rss_kib();
  }

  ~Metro() {
    stop();
    std::filesystem::remove_all(dir_);
  }

  /// SIGTERM, and how it ended ("exited with 0" when it stopped as it should, sanitizers
  /// included: a report makes the exit code non-zero).
  std::string stop() {
    if (pid_ > 0 && alive()) {
      ::kill(pid_, SIGTERM);
      if (!wait_until([&] { return !alive(); }, 30s)) {
        ::kill(pid_, SIGKILL);
        wait_until([&] { return !alive(); }, 10s);
      }
    }
    return exit_description();
  }

  bool started() const { return port_ > 0; }
  int port() const { return port_; }
  /// False once the process has exited (it is reaped then).
  bool alive() {
    if (exited_) return false;
    int status = 0;
    auto r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exited_ = true;
      exit_status_ = status;
    }
    return !exited_;
  }
  std::string exit_description() const {
    if (!exited_) return "running";
    if (WIFSIGNALED(exit_status_))
      return "killed by signal " + std::to_string(WTERMSIG(exit_status_));
    return "exited with " + std::to_string(WEXITSTATUS(exit_status_));
  }
  /// VmRSS in KiB, 0 when it cannot be read.
  long rss_kib() const {
    std::ifstream status("/proc/" + std::to_string(pid_) + "/status");
    std::string line;
    while (std::getline(status, line)) {
      if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
    }
    return 0;
  }
  long baseline_rss_kib() const { return baseline_rss_kib_; }
  std::string stdout_text() const { return read_file(dir_ / "stdout"); }
  std::string log() const { return read_file(dir_ / "stderr"); }

 private:
  static inline int count_ = 0;
  std::filesystem::path dir_;
  pid_t pid_ = -1;
  int port_ = 0;
  long baseline_rss_kib_ = 0;
  bool exited_ = false;
  int exit_status_ = 0;
};

/// While it lives: /healthz and /readyz, each on a fresh connection, every 100 ms, each within
/// kHealthDeadline; metro's VmRSS sampled with them. What went wrong is in `failures()`.
class Watch {
 public:
  explicit Watch(Metro& metro) : metro_(metro) {
    thread_ = std::thread([this] {
      while (!stop_) {
        check("/healthz", 200);
        check("/readyz", 200);
        sample_rss();
        ++rounds_;
        std::this_thread::sleep_for(100ms);
      }
    });
  }
  ~Watch() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::vector<std::string> failures() {
    std::lock_guard lock(mutex_);
    return failures_;
  }
  void sample_rss() { peak_rss_kib_ = std::max(peak_rss_kib_.load(), metro_.rss_kib()); }
  int rounds() const { return rounds_; }
  long peak_rss_kib() const { return peak_rss_kib_; }
  std::chrono::milliseconds worst() const { return worst_; }

 private:
  void check(const char* path, int status) {
    auto started = Clock::now();
    auto r = raw_request(metro_.port(), http_request("GET", path, nullptr), kHealthDeadline);
    auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
    worst_ = std::max(worst_.load(), took);
    if (!r || r->status != status) {
      std::lock_guard lock(mutex_);
      failures_.push_back(
          std::string(path) + ": " +
          (r ? std::to_string(r->status) + " " + r->body
             : "no answer within " + std::to_string(kHealthDeadline.count()) + " s") +
          " (metro " + metro_.exit_description() + ")");
    }
  }

  Metro& metro_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> rounds_{0};
  std::atomic<long> peak_rss_kib_{0};
  std::atomic<std::chrono::milliseconds> worst_{0ms};
  std::mutex mutex_;
  std::vector<std::string> failures_;
};

/// What holds after every scenario: metro alive, health answered throughout, memory bounded.
void expect_survived(Metro& metro, Watch& watch) {
  watch.stop();
  watch.sample_rss();
  EXPECT_TRUE(metro.alive()) << metro.exit_description() << "\n" << metro.log();
  auto failures = watch.failures();
  EXPECT_TRUE(failures.empty()) << failures.size()
                                << " health/readiness checks failed, first: " << failures.front();
  EXPECT_GT(watch.rounds(), 0);
  EXPECT_LT(watch.peak_rss_kib(), metro.baseline_rss_kib() + kRssGrowthKib)
      << "VmRSS went from " << metro.baseline_rss_kib() << " KiB to " << watch.peak_rss_kib()
      << " KiB";
  std::printf(
      "    health/readiness: %d rounds, slowest answer %lld ms; VmRSS %ld -> peak %ld KiB\n",
      watch.rounds(), static_cast<long long>(watch.worst().count()), metro.baseline_rss_kib(),
      watch.peak_rss_kib());
}

void expect_json_error(const std::optional<RawResponse>& r, int status, const std::string& what) {
  ASSERT_TRUE(r.has_value()) << what << ": no answer";
  EXPECT_EQ(r->status, status) << what << ": " << r->body;
  auto body = json::parse(r->body, nullptr, false);
  EXPECT_TRUE(body.is_object() && body["error"].is_string() && body["status"] == status)
      << what << ": " << r->body;
}

class AdminFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    metro_ = std::make_unique<Metro>();
    ASSERT_TRUE(metro_->started()) << metro_->stdout_text() << metro_->log();
  }
  void TearDown() override {
    if (metro_->started()) {
      EXPECT_EQ(metro_->stop(), "exited with 0") << clipped_tail(metro_->log());
    }
  }
  std::unique_ptr<Metro> metro_;
};

TEST_F(AdminFaults, TenSlowClientsLeaveHealthAndReadinessAnswering) {
  Watch watch(*metro_);
  std::vector<RawConnection> slow;
  for (int i = 0; i < 10; ++i) {
    slow.emplace_back(metro_->port());
    ASSERT_TRUE(slow.back().ok());
    slow.back().send("GET /api/v1/subscriptions HTTP/1.1\r\n");
  }
  // A byte every half second: each recv brings something, so only a deadline on the whole head
  // ends them.
  auto until = Clock::now() + 14s;
  while (Clock::now() < until) {
    for (auto& c : slow) c.send("X");
    std::this_thread::sleep_for(500ms);
  }
  for (auto& c : slow) {
    auto r = c.read_response(10s);
    expect_json_error(r, 408, "a slow client after the header deadline");
  }
  expect_survived(*metro_, watch);
}

TEST_F(AdminFaults, TwoHundredIdleConnectionsLeaveHealthAndReadinessAnswering) {
  Watch watch(*metro_);
  std::vector<RawConnection> idle;
  for (int i = 0; i < 200; ++i) {
    idle.emplace_back(metro_->port());
    ASSERT_TRUE(idle.back().ok()) << i;
  }
  std::this_thread::sleep_for(12s);
  // Every one of them is closed by then: to make room (32 per client), or at the header deadline.
  int closed = 0;
  auto deadline = Clock::now() + 10s;
  for (auto& c : idle) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    closed += c.closed_within(std::max(left, 1ms)) ? 1 : 0;
  }
  EXPECT_EQ(closed, 200);
  expect_survived(*metro_, watch);
}

TEST_F(AdminFaults, AHeaderTrickledForeverIsCutOff) {
  Watch watch(*metro_);
  std::vector<RawConnection> trickles;
  for (int i = 0; i < 40; ++i) {  // More than one client's share of connections.
    trickles.emplace_back(metro_->port());
    trickles.back().send("GET /healthz HTTP/1.1\r\nHost: metro\r\n");
  }
  auto started = Clock::now();
  std::vector<bool> cut(trickles.size(), false);
  int line = 0;
  while (Clock::now() - started < 30s &&
         std::count(cut.begin(), cut.end(), true) < static_cast<long>(cut.size())) {
    for (std::size_t i = 0; i < trickles.size(); ++i) {
      if (!cut[i] && !trickles[i].send("X-Line-" + std::to_string(line) + ": v\r\n")) cut[i] = true;
      if (!cut[i] && trickles[i].closed_within(1ms)) cut[i] = true;
    }
    ++line;
    std::this_thread::sleep_for(300ms);
  }
  EXPECT_EQ(std::count(cut.begin(), cut.end(), true), static_cast<long>(cut.size()))
      << "a header still trickling in after 30 s was not cut off";
  expect_survived(*metro_, watch);
}

TEST_F(AdminFaults, A300MegabyteBodyIsRefusedBeforeItIsRead) {
  Watch watch(*metro_);
  constexpr std::size_t kSize = 300u * 1024 * 1024;
  // Sends `chunk` until metro stops taking it (or all 300 MB went), on a thread of its own so
  // that the answer is read as soon as it comes; how much went.
  auto blast = [&](RawConnection& c, const std::string& chunk, std::size_t payload) {
    return std::async(std::launch::async, [&c, &chunk, payload] {
      std::size_t sent = 0;
      while (sent < kSize && c.send(chunk)) sent += payload;
      return sent;
    });
  };
  // Announced: 413 from the head alone, with or without a token.
  const std::string plain(1 << 20, 'a');
  for (const char* token : {static_cast<const char*>(nullptr), kAdmin}) {
    RawConnection c(metro_->port());
    c.send(http_request("POST", "/api/v1/publish", token, {},
                        "Content-Length: " + std::to_string(kSize) + "\r\n"));
    auto sent = blast(c, plain, plain.size());
    expect_json_error(c.read_response(20s), 413, "a 300 MB Content-Length");
    EXPECT_LT(sent.get(), kSize) << "metro read the body it refused";
  }
  // Chunked, so no length to judge by: cut off at the limit.
  {
    RawConnection c(metro_->port());
    c.send(http_request("POST", "/api/v1/publish", kAdmin, {}, "Transfer-Encoding: chunked\r\n"));
    const std::string chunk = "100000\r\n" + std::string(0x100000, 'b') + "\r\n";
    auto sent = blast(c, chunk, 0x100000);
    expect_json_error(c.read_response(20s), 413, "a chunked 300 MB body");
    EXPECT_LT(sent.get(), kSize) << "metro read the body it refused";
  }
  // The limit itself: 1 MiB passes the transport (and is then judged as JSON), one byte more not.
  std::string body(1024 * 1024, ' ');
  expect_json_error(
      raw_request(metro_->port(), http_request("POST", "/api/v1/publish", kAdmin, body)), 400,
      "a body of exactly 1 MiB");
  body += ' ';
  expect_json_error(
      raw_request(metro_->port(), http_request("POST", "/api/v1/publish", kAdmin, body)), 413,
      "a body of 1 MiB + 1 byte");
  expect_survived(*metro_, watch);
}

TEST_F(AdminFaults, HostileRequestsGetTheDocumentedJsonErrors) {
  Watch watch(*metro_);
  auto port = metro_->port();
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  struct Case {
    std::string what;
    std::string request;
    int status;
  };
  std::vector<Case> cases = {
      {"sequence past int64",
       http_request("GET", "/api/v1/deferred/orders/billing/18446744073709551616", kAdmin), 400},
      {"sequence past int64, no token",
       http_request("POST", "/api/v1/deferred/orders/billing/18446744073709551616/retry", nullptr),
       401},
      {"%FF in the topic", http_request("POST", "/api/v1/deferred/%FF/billing/1/complete", kAdmin),
       400},
      {"overlong UTF-8", http_request("GET", "/api/v1/deferred/%C0%AE%C0%AE/billing/1", kAdmin),
       400},
      {"NUL escaped", http_request("GET", "/api/v1/deferred/a%00b/billing/1", kAdmin), 400},
      {"cursor ffff", http_request("GET", "/api/v1/deferred?after=ffff", kAdmin), 400},
      {"cursor odd", http_request("GET", "/api/v1/deferred?after=fff", kAdmin), 400},
      {"cursor of a huge number",
       http_request("GET", "/api/v1/deferred?after=610a620a2d31", kAdmin), 400},
      {"state unknown", http_request("GET", "/api/v1/deferred?state=%E2%98%83", kAdmin), 400},
      {"older_than overflow",
       http_request("GET", "/api/v1/deferred?older_than=999999999999999999999d", kAdmin), 400},
      {"reason a number",
       http_request("POST", "/api/v1/deferred/orders/billing/1/dead-letter", kAdmin,
                    R"({"reason":1})"),
       404},
      {"publish topic null",
       http_request("POST", "/api/v1/publish", kAdmin, R"({"topic":null,"body":1})"), 400},
      {"publish subject a list",
       http_request("POST", "/api/v1/publish", kAdmin,
                    R"({"topic":"orders","body":1,"subject":["a"]})"),
       400},
      {"publish correlation_id a number",
       http_request("POST", "/api/v1/publish", kAdmin,
                    R"({"topic":"orders","body":1,"correlation_id":7})"),
       400},
      {"publish body 100,000 deep",
       http_request("POST", "/api/v1/publish", kAdmin, R"({"topic":"orders","body":)" + deep + "}"),
       400},
      {"publish body deep, no token", http_request("POST", "/api/v1/publish", nullptr, deep), 401},
      {"publish bad UTF-8 in JSON",
       http_request("POST", "/api/v1/publish", kAdmin, "{\"topic\":\"\xff\",\"body\":1}"), 400},
      {"publish a JSON string", http_request("POST", "/api/v1/publish", kAdmin, R"("orders")"),
       400},
      {"publish an unknown topic",
       http_request("POST", "/api/v1/publish", kAdmin, R"({"topic":"nope","body":{}})"), 404},
      {"OPTIONS", http_request("OPTIONS", "/api/v1/deferred", kAdmin), 405},
      {"PATCH an action", http_request("PATCH", "/api/v1/deferred/orders/billing/1/retry", kAdmin),
       405},
      {"TRACE /", http_request("TRACE", "/", nullptr), 405},
      {"a token in lower case scheme",
       "GET /api/v1/whoami HTTP/1.1\r\nAuthorization: bearer nope\r\n\r\n", 401},
      {"an absolute-form target", http_request("GET", "http://metro/api/v1/deferred", kAdmin), 400},
      {"an asterisk target", http_request("OPTIONS", "*", kAdmin), 400},
      {"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400},
      {"HTTP/1.2", "GET /healthz HTTP/1.2\r\n\r\n", 400},
      {"a space in the target", "GET /api/v1/deferred?a=b c HTTP/1.1\r\n\r\n", 400},
      {"a bare LF line end", "GET /healthz HTTP/1.1\nHost: x\n\n", 400},
      {"Content-Length and chunked",
       "POST /api/v1/publish HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: "
       "chunked\r\n\r\n0\r\n\r\n",
       400},
      {"a negative Content-Length", "POST /api/v1/publish HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
       400},
      {"a huge Content-Length",
       "POST /api/v1/publish HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400},
      {"a chunk size past 64 bits",
       http_request("POST", "/api/v1/publish", kAdmin, "", "Transfer-Encoding: chunked\r\n") +
           "fffffffffffffffffff\r\n",
       400},
      {"8,000 headers",
       "GET /healthz HTTP/1.1\r\n" +
           [] {
             std::string h;
             for (int i = 0; i < 8000; ++i) h += "A: b\r\n";
             return h;
           }() +
           "\r\n",
       431},
      {"a 100 KB request line", "GET /" + std::string(100000, 'x') + " HTTP/1.1\r\n\r\n", 414},
  };
  for (const auto& c : cases) {
    expect_json_error(raw_request(port, c.request), c.status, c.what);
    ASSERT_TRUE(metro_->alive()) << c.what << ": " << metro_->exit_description();
  }
  // Pipelined requests on one connection are answered in order; HEAD has no body; HTTP/1.0 ends.
  RawConnection c(port);
  c.send(http_request("GET", "/healthz", nullptr) + http_request("HEAD", "/healthz", nullptr) +
         "GET /nothing HTTP/1.0\r\n\r\n");
  auto first = c.read_response(10s);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->body, "ok\n");
  auto head = c.read_response(10s, true);
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->headers["content-length"], "3");
  EXPECT_EQ(head->body, "");
  expect_json_error(c.read_response(10s), 404, "HTTP/1.0 after pipelined requests");
  EXPECT_TRUE(c.closed_within(10s));
  expect_survived(*metro_, watch);
}

TEST_F(AdminFaults, KeptAliveRequestsAreNotHeldBackByDelayedAcknowledgements) {
  // The defect: the head and body of each response left in two writes without TCP_NODELAY, and
  // on a kept-alive connection the client's delayed ACK (40 ms on Linux) held the body back.
  // The bound of 20 ms is half that timer, not a performance target.
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  RawConnection kept(metro_->port());
  std::vector<double> kept_ms;
  std::vector<double> fresh_ms;
  for (int i = 0; i < 30; ++i) {
    auto t = Clock::now();
    kept.send(http_request("GET", "/healthz", nullptr));
    ASSERT_TRUE(kept.read_response(10s));
    kept_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t).count());
    t = Clock::now();
    ASSERT_TRUE(raw_request(metro_->port(), http_request("GET", "/healthz", nullptr)));
    fresh_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t).count());
  }
  std::printf("    /healthz median: kept-alive %.2f ms, fresh connection %.2f ms\n",
              median(kept_ms), median(fresh_ms));
  EXPECT_LT(median(kept_ms), 20.0);
}

/// At most 300 bytes of `text`, for failure messages.
std::string clipped(const std::string& text) {
  return text.size() <= 300 ? text
                            : text.substr(0, 300) + "… (" + std::to_string(text.size()) + " bytes)";
}

/// Lines of `log` that mention `marker`.
std::vector<std::string> lines_with(const std::string& log, const std::string& marker) {
  std::vector<std::string> out;
  std::istringstream in(log);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find(marker) != std::string::npos) out.push_back(line);
  }
  return out;
}

/// Forges an audit line through a message's correlation id (through Service Bus and the
/// service's log lines) and through the dead-letter reason an admin gives, in `format`.
void forge(const std::string& format) {
  Metro metro(format);
  ASSERT_TRUE(metro.started()) << metro.stdout_text() << metro.log();
  const std::string forged =
      "\n2026-01-01 00:00:00.000 info  audit: token=ops action=complete message=x#1 outcome=ok "
      "FORGED";
  json publish = {{"topic", "orders"},
                  {"subject", "Orders/Created"},
                  {"correlation_id", "order-7" + forged + "-BY-CORRELATION"},
                  {"body", {{"subject", "Orders/Created"}}}};
  auto r =
      raw_request(metro.port(), http_request("POST", "/api/v1/publish", kAdmin, publish.dump()));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 202) << r->body;
  // The handler fails once: the message is parked, with lines naming its correlation id.
  ASSERT_TRUE(wait_until(
      [&] {
        auto m = raw_request(metro.port(),
                             http_request("GET", "/api/v1/deferred/orders/billing/1", kAdmin));
        return m && m->status == 200 && json::parse(m->body, nullptr, false)["state"] == "failed";
      },
      60s))
      << clipped(metro.log());
  json dead_letter = {{"reason", "Fraud" + forged + "-BY-REASON"},
                      {"description", std::string(200 * 1024, 'd')}};
  r = raw_request(metro.port(),
                  http_request("POST", "/api/v1/deferred/orders/billing/1/dead-letter", kAdmin,
                               dead_letter.dump()));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  ASSERT_TRUE(wait_until([&] { return metro.log().find("-BY-REASON") != std::string::npos; }, 20s))
      << clipped(metro.log());
  auto log = metro.log();
  for (const char* marker : {"-BY-CORRELATION", "-BY-REASON"}) {
    auto lines = lines_with(log, marker);
    ASSERT_FALSE(lines.empty()) << marker << "\n" << clipped(log);
    for (const auto& line : lines) {
      // The forged text is inside a line metro wrote, escaped; no line is the forged one.
      EXPECT_NE(line.rfind("2026-01-01 00:00:00.000", 0), 0u) << clipped(line);
      EXPECT_NE(line.find("\\n2026-01-01"), std::string::npos) << clipped(line);
    }
  }
  std::istringstream in(log);
  std::string line;
  std::size_t longest = 0;
  while (std::getline(in, line)) {
    longest = std::max(longest, line.size());
    EXPECT_NE(line.rfind("2026-01-01 00:00:00.000", 0), 0u) << "a forged line: " << clipped(line);
    if (format == "journal") {
      // One entry a line, each with its syslog priority: a line without one would be an entry
      // that metro did not write.
      EXPECT_TRUE(line.size() >= 3 && line[0] == '<' && std::isdigit(line[1]) != 0 &&
                  line[2] == '>')
          << clipped(line);
    }
    if (format == "json") {
      auto parsed = json::parse(line, nullptr, false);
      EXPECT_TRUE(parsed.is_object() && parsed["message"].is_string()) << clipped(line);
    }
  }
  EXPECT_LT(longest, 10u * 1024) << "a 200 KB description must not make a 200 KB line";
  EXPECT_EQ(metro.stop(), "exited with 0") << clipped_tail(metro.log());
}

TEST(AdminLogFaults, ValuesCannotForgeALineInTheTextFormat) { forge("text"); }
TEST(AdminLogFaults, ValuesCannotForgeALineInTheJsonFormat) { forge("json"); }
TEST(AdminLogFaults, ValuesCannotForgeAnEntryInTheJournal) { forge("journal"); }

}  // namespace
