// `metro run` as a real process against `metro emulator` as another: kill -9 of metro mid-stream
// and of the emulator mid-stream, with every message handled at least once, completed, and none
// left deferred; a graceful stop on SIGTERM; the example program with a C++ handler.

#include <csignal>
#include <filesystem>
#include <functional>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>

#include <metro/ledger/ledger.hpp>
#include <metro/sb/client.hpp>

#include "../support/test_support.hpp"

extern char** environ;

namespace {

using metro::test::wait_until;

using namespace std::chrono_literals;
namespace fs = std::filesystem;

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

/// A child process with stdout and stderr in a file.
class Process {
 public:
  Process(std::vector<std::string> argv, fs::path output) : output_(std::move(output)) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, output_.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
  }
  ~Process() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      wait();
    }
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  void signal(int number) const { ::kill(pid_, number); }
  /// Waits for the exit; the exit status, or 128 + the signal.
  int wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  std::string output() const { return read_file(output_); }
  bool wait_for(const std::string& text, std::chrono::milliseconds timeout = 20s) const {
    return wait_until([&] { return output().find(text) != std::string::npos; }, timeout);
  }

 private:
  fs::path output_;
  pid_t pid_ = -1;
};

class RunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("metro-run-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream(dir_ / "bus.toml")
        << "[[topics]]\nname = \"orders\"\n"
           "[[topics.subscriptions]]\nname = \"billing\"\n"
           "lock_duration = \"5s\"\n";  // Dead receivers' locks lapse soon.
    // The handler appends the message's sequence number to a file and takes a little while.
    handler_ = dir_ / "handler.sh";
    std::ofstream(handler_) << "#!/bin/sh\n"
                               "seq=$(grep -o '\"sequence_number\":[0-9]*' | cut -d: -f2)\n"
                               "sleep 0.01\n"
                               "echo $seq >> "
                            << (dir_ / "handled.log").string() << "\n";
    fs::permissions(handler_, fs::perms::owner_all);
  }
  void TearDown() override {
    metro_.reset();
    emulator_.reset();
    fs::remove_all(dir_);
  }

  void start_emulator(std::uint16_t port) {
    auto log = dir_ / ("emulator-" + std::to_string(++emulator_starts_) + ".log");
    emulator_ = std::make_unique<Process>(
        std::vector<std::string>{METRO_BIN, "emulator", "--config", (dir_ / "bus.toml").string(),
                                 "--port", std::to_string(port), "--data-dir",
                                 (dir_ / "bus").string()},
        log);
    ASSERT_TRUE(emulator_->wait_for("connection string: ")) << emulator_->output();
    auto out = emulator_->output();
    auto at = out.find("amqp=") + 5;
    port_ = static_cast<std::uint16_t>(std::stoi(out.substr(at)));
    connection_ = "Endpoint=sb://localhost:" + std::to_string(port_) +
                  ";SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
                  "UseDevelopmentEmulator=true";
  }

  void start_metro(const std::string& exec = {}, const std::string& grace = "10s",
                   const fs::path& config = {}, const fs::path& cwd = {}) {
    auto path = config.empty() ? dir_ / "metro.toml" : config;
    std::ofstream(path) << "[metro]\nworkers = 4\nledger = \"sqlite://"
                        << (dir_ / "ledger.db").string() << "\"\nshutdown_grace = \"" << grace
                        << "\"\n"
                        << metro_options_
                        << "[[subscriptions]]\ntopic_name = \"orders\"\n"
                           "subscription_name = \"billing\"\nconnection_string = \""
                        << connection_ << "\"\n[[subscriptions.handlers]]\nsubject = \"s\"\nexec = "
                        << (exec.empty() ? "[\"" + handler_.string() + "\"]" : exec)
                        << "\nbackoff = \"100ms\"\n[admin]\nenabled = false\n";
    std::vector<std::string> argv{METRO_BIN, "run", "--config", path.string()};
    if (!cwd.empty()) {
      // Started from another folder: relative commands are still found beside the config.
      argv = {"/bin/sh", "-c", "cd '" + cwd.string() + "' && exec " + METRO_BIN +
                                   " run --config '" + path.string() + "'"};
    }
    auto log = dir_ / ("metro-" + std::to_string(++metro_starts_) + ".log");
    metro_ = std::make_unique<Process>(argv, log);
    ASSERT_TRUE(metro_->wait_for("metro running")) << metro_->output();
  }

  void publish(int count) {
    metro::sb::Client client(connection_);
    auto sender = client.create_sender("orders");
    std::vector<metro::sb::Message> batch;
    for (int i = 0; i < count; ++i) {
      metro::sb::Message m;
      m.body = R"({"subject": "s", "n": )" + std::to_string(i) + "}";
      batch.push_back(m);
    }
    sender.send(batch);
  }

  std::vector<std::int64_t> handled() const {
    std::vector<std::int64_t> out;
    std::istringstream in(read_file(dir_ / "handled.log"));
    for (std::int64_t n; in >> n;) out.push_back(n);
    return out;
  }

  /// What is left in the subscription (active or deferred), by peeking.
  std::size_t left() const {
    metro::sb::Client client(connection_);
    return client.create_receiver("orders/Subscriptions/billing").peek(1, 5000).size();
  }

  /// Every one of 1..n handled at least once, and nothing left in the subscription.
  bool all_done(int n) const {
    std::set<std::int64_t> seen;
    for (auto s : handled()) seen.insert(s);
    return seen.size() == static_cast<std::size_t>(n) && *seen.begin() == 1 &&
           *seen.rbegin() == n && left() == 0;
  }

  /// Kills metro with SIGKILL (after `ready()` holds), starts it again with `exec`, waits until all
  /// `n` messages are handled and nothing is left, and stops it with SIGTERM (exit 0).
  void kill_then_restart(int n, const std::function<bool()>& ready, const std::string& exec = {}) {
    ASSERT_TRUE(wait_until(ready, 60s)) << metro_->output();
    metro_->signal(SIGKILL);
    EXPECT_EQ(metro_->wait(), 128 + SIGKILL);
    EXPECT_LT(handled().size(), static_cast<std::size_t>(n)) << "killed too late to mean anything";
    start_metro(exec);
    ASSERT_TRUE(wait_until([&] { return all_done(n); }, 120s))
        << handled().size() << " handled, " << left() << " left\n"
        << metro_->output();
    metro_->signal(SIGTERM);
    EXPECT_EQ(metro_->wait(), 0) << metro_->output();
  }

  /// The ledger's rows by state (an empty map when it has none).
  std::map<metro::ledger::State, std::size_t> ledger_counts() {
    return metro::ledger::open_ledger("sqlite://" + (dir_ / "ledger.db").string())->counts();
  }

  void expect_ledger_all_completed(int n) {
    auto ledger = metro::ledger::open_ledger("sqlite://" + (dir_ / "ledger.db").string());
    auto counts = ledger->counts();
    EXPECT_EQ(counts[metro::ledger::State::kCompleted], static_cast<std::size_t>(n));
    EXPECT_EQ(counts.size(), 1u);
  }

  fs::path dir_;
  fs::path handler_;
  std::string metro_options_;  // More of [metro], e.g. defer = "when-slow".
  std::uint16_t port_ = 0;
  std::string connection_;
  int emulator_starts_ = 0;
  int metro_starts_ = 0;
  std::unique_ptr<Process> emulator_;
  std::unique_ptr<Process> metro_;
};

TEST_F(RunTest, KillDashNineMidStreamThenRestartLosesNothing) {
  constexpr int kMessages = 300;
  start_emulator(0);
  start_metro();
  publish(kMessages);
  kill_then_restart(kMessages, [&] { return handled().size() >= 60; });
  EXPECT_NE(metro_->output().find("stopped"), std::string::npos);
  expect_ledger_all_completed(kMessages);
}

TEST_F(RunTest, WhenSlowKillDashNineWhileFastHandlersRunLosesNothing) {
  // Held messages are only locked: the locks of a killed metro lapse (5 s here) and the
  // messages come again; nothing was deferred, so nothing is left for the ledger to resolve.
  constexpr int kMessages = 300;
  metro_options_ = "defer = \"when-slow\"\ndefer_after = \"4s\"\n";
  start_emulator(0);
  start_metro();
  publish(kMessages);
  kill_then_restart(kMessages, [&] { return handled().size() >= 60; });
  // Nothing in the ledger is unfinished (a message the loaded machine made slow is completed).
  for (const auto& [state, n] : ledger_counts()) {
    EXPECT_EQ(state, metro::ledger::State::kCompleted) << n << " " << to_string(state);
  }
}

TEST_F(RunTest, WhenSlowKillDashNineWhileSlowHandlersRunBehavesAsAlways) {
  // Slow runs outlive defer_after: their messages are recorded and deferred, so after a kill
  // the next start resumes them from the ledger, as with defer = "always".
  constexpr int kMessages = 12;
  auto slow = dir_ / "slow.sh";
  std::ofstream(slow) << "#!/bin/sh\nseq=$(grep -o '\"sequence_number\":[0-9]*' | cut -d: -f2)\n"
                         "sleep 1\necho $seq >> "
                      << (dir_ / "handled.log").string() << "\n";
  fs::permissions(slow, fs::perms::owner_all);
  metro_options_ = "defer = \"when-slow\"\ndefer_after = \"200ms\"\n";
  start_emulator(0);
  auto exec = "[\"" + slow.string() + "\"]";
  start_metro(exec);
  publish(kMessages);
  // Slow runs under way are recorded (state running) before the kill.
  kill_then_restart(
      kMessages,
      [&] {
        return handled().size() >= 2 && ledger_counts()[metro::ledger::State::kRunning] > 0;
      },
      exec);
  expect_ledger_all_completed(kMessages);
}

TEST_F(RunTest, TheEmulatorKilledMidStreamAndRestartedLosesNothing) {
  constexpr int kMessages = 300;
  start_emulator(0);
  start_metro();
  publish(kMessages);
  ASSERT_TRUE(wait_until([&] { return handled().size() >= 60; }, 60s));
  emulator_->signal(SIGKILL);
  emulator_->wait();
  start_emulator(port_);  // Same port, same --data-dir.
  ASSERT_TRUE(wait_until([&] { return all_done(kMessages); }, 120s))
      << handled().size() << " handled, " << left() << " left\n"
      << metro_->output();
  metro_->signal(SIGINT);
  EXPECT_EQ(metro_->wait(), 0) << metro_->output();
  expect_ledger_all_completed(kMessages);
}

TEST_F(RunTest, SigtermWithAHandlerPastTheGraceInterruptsItAndExitsCleanly) {
  // A handler that outlives shutdown_grace is interrupted (its process group killed), every
  // thread is joined and metro exits 0; its message stays deferred and runs at the next start.
  start_emulator(0);
  auto stuck = dir_ / "stuck.sh";
  std::ofstream(stuck) << "#!/bin/sh\ntouch " << (dir_ / "started").string()
                       << "\nif [ -e " << (dir_ / "unstuck").string()
                       << " ]; then cat > /dev/null; exit 0; fi\nsleep 600\n";
  fs::permissions(stuck, fs::perms::owner_all);
  start_metro("[\"" + stuck.string() + "\"]", "1s");
  publish(1);
  ASSERT_TRUE(wait_until([&] { return fs::exists(dir_ / "started"); }));
  auto before = std::chrono::steady_clock::now();
  metro_->signal(SIGTERM);
  EXPECT_EQ(metro_->wait(), 0) << metro_->output();
  EXPECT_LT(std::chrono::steady_clock::now() - before, 60s);
  EXPECT_NE(metro_->output().find("stopped"), std::string::npos) << metro_->output();
  std::ofstream(dir_ / "unstuck") << "";
  start_metro("[\"" + stuck.string() + "\"]", "1s");
  ASSERT_TRUE(wait_until([&] { return left() == 0; }, 60s)) << metro_->output();
  metro_->signal(SIGTERM);
  EXPECT_EQ(metro_->wait(), 0) << metro_->output();
  expect_ledger_all_completed(1);
}

TEST_F(RunTest, ARelativeExecPathIsFoundBesideTheConfigFile) {
  start_emulator(0);
  fs::create_directories(dir_ / "conf" / "handlers");
  fs::create_directories(dir_ / "elsewhere");
  fs::copy_file(handler_, dir_ / "conf" / "handlers" / "handler.sh");
  start_metro("[\"handlers/handler.sh\"]", "10s", dir_ / "conf" / "metro.toml",
              dir_ / "elsewhere");
  publish(3);
  ASSERT_TRUE(wait_until([&] { return all_done(3); }, 60s)) << metro_->output();
  metro_->signal(SIGTERM);
  EXPECT_EQ(metro_->wait(), 0) << metro_->output();
}

#ifdef METRO_EXAMPLE_APP
TEST_F(RunTest, TheExampleProgramCompletesExplicitlyFromItsCppHandler) {
  auto ledger = dir_ / "app-ledger.db";
  ::setenv("METRO_LEDGER_PATH", ledger.c_str(), 1);
  Process app({METRO_EXAMPLE_APP, "run", "--config", METRO_SOURCE_DIR "/examples/my-app.toml",
               "--emulator", "--emulator-port", "0"},
              dir_ / "app.log");
  ::unsetenv("METRO_LEDGER_PATH");
  ASSERT_TRUE(app.wait_for("metro running")) << app.output();
  auto out = app.output();
  auto at = out.find("connection string: ") + 19;
  connection_ = out.substr(at, out.find('\n', at) - at);
  metro::sb::Client client(connection_);
  metro::sb::Message m;
  m.body = R"({"subject": "MetroDemo/Type/GeekJokes", "joke": "a joke"})";
  client.create_sender("metro-demo").send(m);
  ASSERT_TRUE(app.wait_for("my_func: MetroDemo/Type/GeekJokes #1: a joke")) << app.output();
  auto receiver = client.create_receiver("metro-demo/Subscriptions/sub-metrodemo-myapp");
  ASSERT_TRUE(wait_until(
      [&] {
        auto l = metro::ledger::open_ledger("sqlite://" + ledger.string());
        auto row = l->find({"metro-demo", "sub-metrodemo-myapp", 1});
        return row && row->state == metro::ledger::State::kCompleted &&
               receiver.peek(1, 10).empty();
      },
      20s));
  app.signal(SIGTERM);
  EXPECT_EQ(app.wait(), 0) << app.output();
}
#endif

}  // namespace

namespace {

/// The first `"name": <digits or "text">` of a JSON text, as text; empty when there is none.
std::string json_field(const std::string& text, const std::string& name) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex("\"" + name + "\": \"?([^\",\\n]*)"))) return {};
  return m[1];
}

}  // namespace

TEST_F(RunTest, ABulkJobGoesOnAfterSigtermAndARestartThenFinishes) {
  constexpr int kMessages = 60;
  start_emulator(0);
  // Fails until the file `fixed` exists; parked after one attempt.
  auto failing = dir_ / "failing.sh";
  std::ofstream(failing) << "#!/bin/sh\ncat >/dev/null\n[ -e " << (dir_ / "fixed").string()
                         << " ] && exit 0\necho \"order $$ not found\" >&2\nexit 1\n";
  fs::permissions(failing, fs::perms::owner_all);
  auto config = dir_ / "bulk.toml";
  std::ofstream(config)
      << "[metro]\nworkers = 4\nledger = \"sqlite://" << (dir_ / "ledger.db").string()
      << "\"\n[[subscriptions]]\ntopic_name = \"orders\"\n"
         "subscription_name = \"billing\"\nconnection_string = \""
      << connection_ << "\"\n[[subscriptions.handlers]]\nsubject = \"s\"\nexec = [\""
      << failing.string()
      << "\"]\nmax_attempts = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n"
         "tokens = [{ name = \"ops\", token = \"e2e-admin\", role = \"admin\" }]\n"
         "bulk_rate = 20\n";  // 60 messages take 3 s: SIGTERM comes mid-way.
  std::string url;
  auto start = [&] {
    metro_ = std::make_unique<Process>(
        std::vector<std::string>{METRO_BIN, "run", "--config", config.string()},
        dir_ / ("metro-" + std::to_string(++metro_starts_) + ".log"));
    ASSERT_TRUE(metro_->wait_for("metro running")) << metro_->output();
    std::smatch m;
    auto out = metro_->output();
    ASSERT_TRUE(std::regex_search(out, m, std::regex("metro admin listening: (http://\\S+)/")));
    url = m[1];
  };
  auto cli = [&](const std::string& args) {
    return metro::test::run_command(std::string(METRO_BIN) + " deferred --url " + url +
                                    " --token e2e-admin " + args);
  };
  start();
  publish(kMessages);
  ASSERT_TRUE(
      wait_until([&] { return json_field(cli("groups --json").second, "count") == "60"; }, 60s))
      << cli("groups").second;
  std::ofstream(dir_ / "fixed") << "";
  auto [dry_code, dry] = cli("retry --state failed --dry-run");
  EXPECT_EQ(dry_code, 0);
  EXPECT_NE(dry.find("retry: 60 message(s) match (dry run: nothing was done)"), std::string::npos)
      << dry;
  auto [code, started] = cli("retry --state failed --detach --json");
  ASSERT_EQ(code, 0) << started;
  auto id = json_field(started, "id");
  ASSERT_EQ(id.size(), 16u) << started;
  auto done = [&] {
    auto text = cli("job " + id + " --json").second;
    auto n = json_field(text, "done");
    return n.empty() ? -1 : std::stoi(n);
  };
  ASSERT_TRUE(wait_until([&] { return done() >= 10; }, 30s));
  metro_->signal(SIGTERM);
  EXPECT_EQ(metro_->wait(), 0) << metro_->output();
  {
    auto ledger = metro::ledger::open_ledger("sqlite://" + (dir_ / "ledger.db").string());
    auto job = ledger->find_job(id);
    ASSERT_TRUE(job);
    EXPECT_EQ(job->state, metro::ledger::JobState::kRunning);
    EXPECT_LT(job->done, static_cast<std::size_t>(kMessages))
        << "stopped too late to mean anything";
  }

  start();
  // (The job's own "state"; its filter's comes first.)
  ASSERT_TRUE(wait_until(
      [&] {
        return cli("job " + id + " --json").second.find("\"state\": \"completed\"") !=
               std::string::npos;
      },
      60s))
      << cli("job " + id).second << metro_->output();
  EXPECT_EQ(done(), kMessages);
  EXPECT_TRUE(wait_until([&] { return left() == 0; }, 60s)) << left() << " left";
  auto [list_code, list] = cli("list --state failed");
  EXPECT_EQ(list.find("failed  "), std::string::npos) << list;
  metro_->signal(SIGTERM);
  EXPECT_EQ(metro_->wait(), 0) << metro_->output();
  expect_ledger_all_completed(kMessages);
}
