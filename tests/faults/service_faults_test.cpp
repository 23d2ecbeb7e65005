// Faults around the service, driving the real `metro` binary: a ledger that cannot be written
// (its file system full) while messages arrive. What must hold: no crash; nothing dead-lettered
// that no handler saw; /readyz says 503 with the reason while it lasts; intake resumes by itself
// when the ledger can be written again, and every message is handled.
//
// The ledger lives on a small tmpfs this test mounts (it runs as root in CI); where mounting is
// not allowed, the metro process's file-size limit (RLIMIT_FSIZE, set from outside with prlimit)
// makes the ledger's files unable to grow instead.

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <metro/emulator/emulator.hpp>
#include <metro/sb/client.hpp>

#include "../support/test_support.hpp"

extern char** environ;

namespace {

using metro::test::wait_until;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

constexpr const char* kEntity = "orders/Subscriptions/billing";

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class MetroProcess {
 public:
  MetroProcess(const fs::path& config, const fs::path& output) : output_(output) {
    // SIGXFSZ ignored (as a service manager would set it): a file-size limit fails the write.
    std::vector<std::string> argv{
        "/bin/sh", "-c",
        std::string("trap '' XFSZ; exec ") + METRO_BIN + " run --config '" + config.string() + "'"};
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
  ~MetroProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      wait();
    }
  }
  pid_t pid() const { return pid_; }
  void signal(int n) const { ::kill(pid_, n); }
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

class UnwritableLedgerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("metro-faults-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "ledger");
    // METRO_FAULTS_NO_TMPFS=1 takes the file-size-limit path even where mounting works.
    mounted_ = std::getenv("METRO_FAULTS_NO_TMPFS") == nullptr &&
               ::mount("tmpfs", (dir_ / "ledger").c_str(), "tmpfs", 0, "size=8m") == 0;
    metro::emulator::EmulatorOptions options;
    options.port = 0;
    metro::emulator::TopicOptions topic{"orders", {}, {}};
    topic.subscriptions.push_back({"billing", {}, {}});
    options.bus.topics.push_back(topic);
    bus_ = std::make_unique<metro::emulator::Emulator>(options);
    bus_->start();
    handler_ = dir_ / "handler.sh";
    std::ofstream(handler_)
        << "#!/bin/sh\nseq=$(grep -o '\"sequence_number\":[0-9]*' | cut -d: -f2)\n"
           "echo $seq >> "
        << (dir_ / "handled.log").string() << "\n";
    fs::permissions(handler_, fs::perms::owner_all);
  }
  void TearDown() override {
    metro_.reset();
    bus_.reset();
    if (mounted_) ::umount2((dir_ / "ledger").c_str(), MNT_DETACH);
    fs::remove_all(dir_);
  }

  void start_metro() {
    auto config = dir_ / "metro.toml";
    std::ofstream(config) << "[metro]\nworkers = 4\nledger = \"sqlite://"
                          << (dir_ / "ledger" / "ledger.db").string()
                          << "\"\n[[subscriptions]]\ntopic_name = \"orders\"\n"
                             "subscription_name = \"billing\"\nconnection_string = \""
                          << bus_->connection_string()
                          << "\"\n[[subscriptions.handlers]]\nsubject = \"s\"\nexec = [\""
                          << handler_.string() << "\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    metro_ = std::make_unique<MetroProcess>(config, dir_ / "metro.log");
    ASSERT_TRUE(metro_->wait_for("metro running")) << metro_->output();
    auto out = metro_->output();
    auto at = out.find("metro admin listening: http://127.0.0.1:");
    ASSERT_NE(at, std::string::npos) << out;
    admin_port_ =
        std::stoi(out.substr(at + std::string("metro admin listening: http://127.0.0.1:").size()));
  }

  /// /readyz: status and body.
  std::pair<int, std::string> readyz() {
    httplib::Client client("127.0.0.1", admin_port_);
    client.set_read_timeout(10, 0);
    auto res = client.Get("/readyz");
    if (!res) return {0, ""};
    return {res->status, res->body};
  }

  void publish(int count, std::size_t pad) {
    metro::sb::Client client(bus_->connection_string());
    auto sender = client.create_sender("orders");
    for (int i = 0; i < count; ++i) {
      metro::sb::Message m;
      m.body = R"({"subject": "s", "pad": ")" + std::string(pad, 'x') + "\"}";
      sender.send(m);
    }
  }

  std::set<std::int64_t> handled() const {
    std::set<std::int64_t> out;
    std::istringstream in(read_file(dir_ / "handled.log"));
    for (std::int64_t n; in >> n;) out.insert(n);
    return out;
  }

  /// Makes the ledger's files unable to grow.
  void fill() {
    if (mounted_) {
      std::ofstream filler(dir_ / "ledger" / "filler", std::ios::binary);
      std::string block(64 * 1024, '\0');
      while (filler.write(block.data(), static_cast<std::streamsize>(block.size()))) {
        filler.flush();
        if (!filler) break;
      }
    } else {
      rlimit limit{0, RLIM_INFINITY};  // Writes within the files' size only (raised again below).
      ASSERT_EQ(::prlimit(metro_->pid(), RLIMIT_FSIZE, &limit, nullptr), 0) << std::strerror(errno);
    }
  }
  void unfill() {
    if (mounted_) {
      fs::remove(dir_ / "ledger" / "filler");
    } else {
      rlimit limit{RLIM_INFINITY, RLIM_INFINITY};
      ASSERT_EQ(::prlimit(metro_->pid(), RLIMIT_FSIZE, &limit, nullptr), 0);
    }
  }

  fs::path dir_;
  fs::path handler_;
  bool mounted_ = false;
  int admin_port_ = 0;
  std::unique_ptr<metro::emulator::Emulator> bus_;
  std::unique_ptr<MetroProcess> metro_;
};

TEST_F(UnwritableLedgerTest, IntakeStopsWhileTheLedgerIsFullAndResumesByItselfLosingNothing) {
  start_metro();
  publish(5, 10);
  ASSERT_TRUE(wait_until([&] { return handled().size() == 5; })) << metro_->output();
  ASSERT_TRUE(wait_until([&] { return readyz().first == 200; }));

  fill();
  constexpr int kDuringOutage = 30;
  publish(kDuringOutage, 64 * 1024);
  // Not ready, and why.
  ASSERT_TRUE(wait_until([&] { return readyz().first == 503; }, 60s)) << metro_->output();
  auto [status, body] = readyz();
  EXPECT_EQ(status, 503);
  EXPECT_NE(body.find("the ledger cannot be written"), std::string::npos) << body;
  EXPECT_NE(body.find("\"status\":503"), std::string::npos) << body;
  // Several seconds of outage: the messages are held, not given back until they die.
  for (int i = 0; i < 20; ++i) {
    std::this_thread::sleep_for(250ms);
    ASSERT_EQ(bus_->counts(kEntity).dead_lettered, 0u) << metro_->output();
  }
  EXPECT_EQ(handled().size(), 5u);  // Nothing was deferred (or run) without a record.
  EXPECT_EQ(readyz().first, 503);

  unfill();
  ASSERT_TRUE(wait_until([&] { return handled().size() == 5 + kDuringOutage; }, 120s))
      << handled().size() << " handled\n"
      << metro_->output();
  ASSERT_TRUE(wait_until([&] { return bus_->counts(kEntity).total() == 0; }, 60s));
  ASSERT_TRUE(wait_until([&] { return readyz().first == 200; }, 30s));
  EXPECT_EQ(bus_->counts(kEntity).dead_lettered, 0u);
  auto out = metro_->output();
  // (Under a file-size limit metro's own log file cannot grow either: its lines of the outage
  // are lost, so they are only looked for on the tmpfs.)
  if (mounted_) {
    EXPECT_NE(out.find("ledger: cannot be written"), std::string::npos) << out;
  }
  EXPECT_NE(out.find("ledger: can be written again"), std::string::npos) << out;
  if (std::getenv("METRO_TEST_DEBUG") != nullptr) std::cerr << out;
  metro_->signal(SIGTERM);
  EXPECT_EQ(metro_->wait(), 0) << metro_->output();
}

}  // namespace
