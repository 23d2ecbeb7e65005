// Three `metro run` processes on the same two subscriptions of one `metro emulator` process,
// sharing a PostgreSQL ledger (a real server started here in a temporary directory): 3,000
// messages with exec handlers taking 10-200 ms, one instance killed with SIGKILL mid-stream and
// PostgreSQL restarted mid-stream; every message handled at least once and completed, the killed
// instance's messages taken over within its lease and a reaper period, nothing left deferred.
// Then a message parked by one instance is retried through another's API. And `metro run` on a
// database it cannot use fails at start, naming the host and the reason.

#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <spawn.h>
#include <sys/wait.h>

#include <metro/ledger/ledger.hpp>
#include <metro/sb/client.hpp>

#include "../support/postgres_server.hpp"
#include "../support/test_support.hpp"

extern char** environ;

namespace {

using metro::test::wait_until;

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using metro::ledger::State;

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

  pid_t pid() const { return pid_; }
  void signal(int number) const { ::kill(pid_, number); }
  int wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  std::string output() const { return read_file(output_); }
  bool wait_for(const std::string& text, std::chrono::milliseconds timeout = 30s) const {
    return wait_until([&] { return output().find(text) != std::string::npos; }, timeout);
  }

 private:
  fs::path output_;
  pid_t pid_ = -1;
};

constexpr int kPublished = 1500;  // To a topic with two subscriptions: 3,000 messages.
constexpr const char* kToken = "instances-admin-token";

class InstancesE2e : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("metro-instances-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    pg_ = std::make_unique<metro::test::PostgresServer>();
    pg_->create_database("metro");
    std::ofstream(dir_ / "bus.toml") << "[[topics]]\nname = \"load\"\n"
                                        "[[topics.subscriptions]]\nname = \"s1\"\n"
                                        "lock_duration = \"5s\"\n"
                                        "[[topics.subscriptions]]\nname = \"s2\"\n"
                                        "lock_duration = \"5s\"\n";
    // 10-200 ms per message (spread by sequence number), then one line: subscription, sequence
    // number, the metro process that ran it. A "flaky" message fails until `fixed` exists.
    handler_ = dir_ / "handler.sh";
    std::ofstream(handler_) << "#!/bin/sh\n"
                               "read -r task\n"
                               "seq=${task#*\\\"sequence_number\\\":}; seq=${seq%%[!0-9]*}\n"
                               "sub=${task#*\\\"subscription_name\\\":\\\"}; sub=${sub%%\\\"*}\n"
                               "case $task in *flaky*) [ -e "
                            << (dir_ / "fixed").string()
                            << " ] || exit 1;; esac\n"
                               "ms=$(( (seq * 37) % 191 + 10 ))\n"
                               "sleep $(printf '0.%03d' $ms)\n"
                               "echo \"$sub $seq $PPID\" >> "
                            << (dir_ / "handled.log").string() << "\n";
    fs::permissions(handler_, fs::perms::owner_all);
    auto log = dir_ / "emulator.log";
    emulator_ = std::make_unique<Process>(
        std::vector<std::string>{METRO_BIN, "emulator", "--config", (dir_ / "bus.toml").string(),
                                 "--port", "0"},
        log);
    ASSERT_TRUE(emulator_->wait_for("connection string: ")) << emulator_->output();
    auto out = emulator_->output();
    auto port = std::stoi(out.substr(out.find("amqp=") + 5));
    connection_ = "Endpoint=sb://localhost:" + std::to_string(port) +
                  ";SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
                  "UseDevelopmentEmulator=true";
  }

  void TearDown() override {
    metros_.clear();
    emulator_.reset();
    pg_.reset();
    if (!HasFailure()) fs::remove_all(dir_);
  }

  fs::path write_config(const std::string& id, const std::string& ledger) {
    auto path = dir_ / (id + ".toml");
    std::ofstream out(path);
    out << "[metro]\nworkers = 8\nledger = \"" << ledger << "\"\ninstance_id = \"" << id
        << "\"\nlease = \"3s\"\nshutdown_grace = \"5s\"\n";
    for (auto sub : {"s1", "s2"}) {
      out << "[[subscriptions]]\ntopic_name = \"load\"\nsubscription_name = \"" << sub
          << "\"\nconnection_string = \"" << connection_
          << "\"\n[[subscriptions.handlers]]\nsubject = \"s\"\nexec = [\"" << handler_.string()
          << "\"]\nbackoff = \"100ms\"\n[[subscriptions.handlers]]\nsubject = \"flaky\"\nexec = [\""
          << handler_.string() << "\"]\nmax_attempts = 1\n";
    }
    out << "[admin]\nlisten = \"127.0.0.1:0\"\ntokens = [{ token = \"" << kToken
        << "\", role = \"admin\" }]\n";
    return path;
  }

  Process& start_metro(const std::string& id) {
    auto config = write_config(id, "postgresql://metro:${METRO_TEST_PG_PASSWORD}@127.0.0.1:" +
                                       std::to_string(pg_->port()) + "/metro");
    ::setenv("METRO_TEST_PG_PASSWORD", metro::test::PostgresServer::password().c_str(), 1);
    metros_[id] = std::make_unique<Process>(
        std::vector<std::string>{METRO_BIN, "run", "--config", config.string()},
        dir_ / (id + ".log"));
    return *metros_[id];
  }

  int admin_port(const std::string& id) {
    auto out = metros_.at(id)->output();
    constexpr std::string_view kListening = "metro admin listening: http://127.0.0.1:";
    auto at = out.find(kListening);
    return at == std::string::npos ? 0 : std::stoi(out.substr(at + kListening.size()));
  }

  void publish(int count, const std::string& subject = "s") {
    metro::sb::Client client(connection_);
    auto sender = client.create_sender("load");
    for (int done = 0; done < count; done += 250) {
      std::vector<metro::sb::Message> batch;
      for (int i = done; i < std::min(count, done + 250); ++i) {
        metro::sb::Message m;
        m.body = R"({"subject": ")" + subject + R"(", "n": )" + std::to_string(i) + "}";
        batch.push_back(m);
      }
      sender.send(batch);
    }
  }

  struct Handled {
    std::set<std::pair<std::string, std::int64_t>> distinct;
    std::size_t lines = 0;
    std::map<std::string, std::size_t> by_process;
  };
  Handled handled() const {
    Handled h;
    std::istringstream in(read_file(dir_ / "handled.log"));
    std::string sub, pid;
    for (std::int64_t seq; in >> sub >> seq >> pid;) {
      h.distinct.insert({sub, seq});
      ++h.lines;
      ++h.by_process[pid];
    }
    return h;
  }

  std::size_t left(const std::string& sub) const {
    metro::sb::Client client(connection_);
    return client.create_receiver("load/Subscriptions/" + sub).peek(1, 5000).size();
  }

  std::unique_ptr<metro::ledger::Ledger> ledger() {
    return metro::ledger::open_ledger(pg_->url("metro"));
  }

  fs::path dir_;
  fs::path handler_;
  std::string connection_;
  std::unique_ptr<metro::test::PostgresServer> pg_;
  std::unique_ptr<Process> emulator_;
  std::map<std::string, std::unique_ptr<Process>> metros_;
};

TEST_F(InstancesE2e, ThreeInstancesShareTwoSubscriptionsThroughAKillAndAPostgresRestart) {
  // Three instances start at the same moment on an empty database: the schema is made once.
  for (auto id : {"i1", "i2", "i3"}) start_metro(id);
  for (auto id : {"i1", "i2", "i3"}) {
    ASSERT_TRUE(metros_[id]->wait_for("metro running")) << metros_[id]->output();
  }
  // Every migration once: 1, 2, … with none twice.
  EXPECT_EQ(pg_->sql("metro",
                     "SELECT count(*) = max(version) AND count(DISTINCT version) = count(*)"
                     " FROM schema_migrations"),
            "t\n");
  auto started = std::chrono::steady_clock::now();
  publish(kPublished);
  const std::size_t total = 2 * kPublished;

  // Mid-stream, i3 dies without a word.
  ASSERT_TRUE(wait_until([&] { return handled().distinct.size() >= total / 4; }, 60s));
  metros_["i3"]->signal(SIGKILL);
  EXPECT_EQ(metros_["i3"]->wait(), 128 + SIGKILL);
  auto killed = std::chrono::steady_clock::now();
  auto held_by_i3 = [&] {
    std::size_t n = 0;
    for (auto sub : {"s1", "s2"}) {
      metro::ledger::Query q;
      q.topic = "load";
      q.subscription = sub;
      q.limit = 1000;
      auto l = ledger();
      for (;;) {
        auto page = l->list(q);
        for (auto& m : page.items) {
          bool active = m.state == State::kDeferring || m.state == State::kDeferred ||
                        m.state == State::kRunning || m.state == State::kRetrying;
          if (active && m.owner == "i3") ++n;
        }
        if (!page.next) break;
        q.after = page.next;
      }
    }
    return n;
  };
  auto held = held_by_i3();
  // Its lease is 3 s and the reaper looks every 3 s (the lease, below deferred_deadline / 4).
  ASSERT_TRUE(wait_until([&] { return held_by_i3() == 0; }, 60s)) << held_by_i3();
  auto takeover = std::chrono::steady_clock::now() - killed;
  std::cout << "i3 held " << held << " unfinished message(s) when killed; all taken over after "
            << std::chrono::duration_cast<std::chrono::milliseconds>(takeover).count() << " ms\n";
  RecordProperty(
      "takeover_ms",
      static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(takeover).count()));
  EXPECT_LT(takeover, 30s);

  // Then PostgreSQL restarts under the two survivors.
  std::cout << "PostgreSQL restarted with " << handled().distinct.size() << " of " << total
            << " handled\n";
  pg_->stop();
  std::this_thread::sleep_for(2s);
  pg_->start();

  ASSERT_TRUE(wait_until(
      [&] { return handled().distinct.size() == total && left("s1") == 0 && left("s2") == 0; },
      150s))
      << "handled " << handled().distinct.size() << " of " << total << "; left " << left("s1")
      << " + " << left("s2");
  auto drained = std::chrono::steady_clock::now() - started;
  ASSERT_TRUE(wait_until([&] { return ledger()->counts()[State::kCompleted] == total; }, 60s))
      << ledger()->counts()[State::kCompleted];
  auto counts = ledger()->counts();
  EXPECT_EQ(counts.size(), 1u) << "only completed messages: nothing deferred and unknown";
  auto h = handled();
  std::cout << "3,000 messages on 2 subscriptions, 3 instances (one killed, PostgreSQL "
               "restarted): drained in "
            << std::chrono::duration_cast<std::chrono::milliseconds>(drained).count()
            << " ms; handler runs " << h.lines << ", duplicates " << h.lines - total
            << "; runs per process:";
  for (auto& [pid, n] : h.by_process) std::cout << " " << pid << "=" << n;
  std::cout << "\n";
  RecordProperty("duplicates", static_cast<int>(h.lines - total));
  EXPECT_GE(h.by_process.size(), 2u);

  // The survivors' heartbeats are live, the dead one's is not.
  auto instances = ledger()->instances();
  std::map<std::string, bool> live;
  for (auto& i : instances) live[i.id] = i.live;
  EXPECT_TRUE(live["i1"]);
  EXPECT_TRUE(live["i2"]);
  EXPECT_FALSE(live["i3"]);

  // A message parked by one instance is retried through the other's API.
  publish(1, "flaky");
  std::optional<metro::ledger::DeferredMessage> parked;
  ASSERT_TRUE(wait_until(
      [&] {
        metro::ledger::Query q;
        q.state = State::kFailed;
        auto page = ledger()->list(q);
        if (page.items.empty()) return false;
        parked = page.items.front();
        return true;
      },
      60s));
  auto by = parked->owner;
  auto other = by == "i1" ? "i2" : "i1";
  std::ofstream(dir_ / "fixed") << "now\n";
  httplib::Client api("127.0.0.1", admin_port(other));
  api.set_read_timeout(30, 0);
  auto path = "/api/v1/deferred/load/" + parked->key.subscription + "/" +
              std::to_string(parked->key.sequence_number) + "/retry";
  auto res = api.Post(path, {{"Authorization", std::string("Bearer ") + kToken}}, "", "");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 202) << res->body;
  ASSERT_TRUE(
      wait_until([&] { return ledger()->find(parked->key)->state == State::kCompleted; }, 60s));
  EXPECT_EQ(ledger()->find(parked->key)->owner, other) << "parked by " << by;
  for (auto id : {"i1", "i2"}) {
    metros_[id]->signal(SIGTERM);
    EXPECT_EQ(metros_[id]->wait(), 0) << metros_[id]->output();
  }
  EXPECT_TRUE(ledger()->instances().size() <= 1u);  // Those that stopped left; i3 never did.
}

TEST_F(InstancesE2e, ADatabaseThatCannotBeUsedIsAClearErrorAtStart) {
  auto wrong = write_config("w", "postgresql://metro:wrong-password-42@127.0.0.1:" +
                                     std::to_string(pg_->port()) + "/metro");
  Process bad({METRO_BIN, "run", "--config", wrong.string()}, dir_ / "wrong.log");
  EXPECT_EQ(bad.wait(), 1);
  auto out = read_file(dir_ / "wrong.log");
  EXPECT_NE(out.find("127.0.0.1:" + std::to_string(pg_->port())), std::string::npos) << out;
  EXPECT_NE(out.find("password authentication failed"), std::string::npos) << out;
  EXPECT_EQ(out.find("wrong-password-42"), std::string::npos) << out;

  auto gone = write_config("g", "postgresql://metro:s3cret-pw@127.0.0.1:1/metro");
  Process unreachable({METRO_BIN, "run", "--config", gone.string()}, dir_ / "gone.log");
  EXPECT_EQ(unreachable.wait(), 1);
  out = read_file(dir_ / "gone.log");
  EXPECT_NE(out.find("127.0.0.1:1"), std::string::npos) << out;
  EXPECT_NE(out.find("Connection refused"), std::string::npos) << out;
  EXPECT_EQ(out.find("s3cret-pw"), std::string::npos) << out;

  // metro check shows the ledger without its password.
  Process check({METRO_BIN, "check", "--config", gone.string()}, dir_ / "check.log");
  EXPECT_EQ(check.wait(), 0);
  out = read_file(dir_ / "check.log");
  EXPECT_NE(out.find("postgresql://metro:***@127.0.0.1:1/metro"), std::string::npos) << out;
  EXPECT_EQ(out.find("s3cret-pw"), std::string::npos) << out;
}

TEST_F(InstancesE2e, ASecondProcessOnOneSqliteFileIsRefusedWithTheReason) {
  auto file = "sqlite://" + (dir_ / "one.db").string();
  auto first_config = write_config("first", file);
  Process first({METRO_BIN, "run", "--config", first_config.string()}, dir_ / "first.log");
  ASSERT_TRUE(first.wait_for("metro running")) << first.output();
  auto second_config = write_config("second", file);
  Process second({METRO_BIN, "run", "--config", second_config.string()}, dir_ / "second.log");
  EXPECT_EQ(second.wait(), 1);
  auto out = read_file(dir_ / "second.log");
  EXPECT_NE(out.find("is in use by metro instance 'first' (pid " + std::to_string(first.pid())),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("a SQLite ledger serves one metro process"), std::string::npos) << out;
  // Once the first has stopped, the file is free.
  first.signal(SIGTERM);
  EXPECT_EQ(first.wait(), 0);
  Process third({METRO_BIN, "run", "--config", second_config.string()}, dir_ / "third.log");
  EXPECT_TRUE(third.wait_for("metro running")) << third.output();
}

TEST_F(InstancesE2e, LedgerMigrateAndCopyMoveASqliteLedgerToPostgres) {
  // A single instance's SQLite ledger with history: handled messages and a parked one.
  auto sqlite = dir_ / "single.db";
  {
    auto l = metro::ledger::open_ledger("sqlite://" + sqlite.string());
    for (int i = 1; i <= 3; ++i) {
      metro::ledger::DeferredMessage m;
      m.key = {"load", "s1", i};
      m.subject = "s";
      m.body = "{}";
      l->record(m);
      l->record_run(m.key, {"handler.sh",
                            1,
                            metro::ledger::HandlerRun::Outcome::kFailed,
                            metro::ledger::Clock::now(),
                            metro::ledger::Clock::now(),
                            "boom",
                            {},
                            0});
      l->set_state(m.key, i == 3 ? State::kFailed : State::kCompleted, "boom");
    }
  }
  auto config = write_config("m", "postgresql://metro:" + metro::test::PostgresServer::password() +
                                      "@127.0.0.1:" + std::to_string(pg_->port()) + "/metro");
  Process dry({METRO_BIN, "ledger", "migrate", "--config", config.string(), "--dry-run"},
              dir_ / "dry.log");
  EXPECT_EQ(dry.wait(), 0);
  auto out = read_file(dir_ / "dry.log");
  EXPECT_NE(out.find("pending migration 1:"), std::string::npos) << out;
  EXPECT_EQ(out.find(metro::test::PostgresServer::password()), std::string::npos) << out;
  Process migrate({METRO_BIN, "ledger", "migrate", "--config", config.string()},
                  dir_ / "migrate.log");
  EXPECT_EQ(migrate.wait(), 0);
  // Every migration the dry run listed is applied, the newest last.
  std::size_t pending = 0;
  for (auto at = out.find("pending migration "); at != std::string::npos;
       at = out.find("pending migration ", at + 1)) {
    ++pending;
  }
  EXPECT_GT(pending, 0u);
  EXPECT_NE(read_file(dir_ / "migrate.log")
                .find("applied " + std::to_string(pending) + " migration(s); schema version " +
                      std::to_string(pending)),
            std::string::npos)
      << read_file(dir_ / "migrate.log");
  Process again({METRO_BIN, "ledger", "migrate", "--config", config.string()}, dir_ / "again.log");
  EXPECT_EQ(again.wait(), 0);
  EXPECT_NE(read_file(dir_ / "again.log").find("up to date"), std::string::npos);

  ::setenv("METRO_TEST_PG_URL", pg_->url("metro").c_str(), 1);
  Process copy({METRO_BIN, "ledger", "copy", "--from", "sqlite://" + sqlite.string(), "--to",
                "${METRO_TEST_PG_URL}"},
               dir_ / "copy.log");
  EXPECT_EQ(copy.wait(), 0) << read_file(dir_ / "copy.log");
  out = read_file(dir_ / "copy.log");
  EXPECT_NE(out.find("copied 3 message record(s)"), std::string::npos) << out;
  EXPECT_EQ(out.find(metro::test::PostgresServer::password()), std::string::npos) << out;
  auto pg = ledger();
  EXPECT_EQ(pg->counts()[State::kCompleted], 2u);
  EXPECT_EQ(pg->find({"load", "s1", 3})->state, State::kFailed);
  EXPECT_EQ(pg->runs({"load", "s1", 3}).at(0).error, "boom");
}

}  // namespace
