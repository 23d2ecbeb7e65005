// `metro run` under systemd: the notify protocol (Type=notify) over a real unix datagram socket
// as systemd's NOTIFY_SOCKET, the watchdog, and log lines for the journal (JOURNAL_STREAM).

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../support/test_support.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

/// A temporary folder with a config of one subscription on the embedded emulator.
class RunFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/metro-systemd-test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    std::ofstream(dir_ / "metro.toml") << R"([metro]
workers = 1
ledger = "sqlite://)" << (dir_ / "ledger.db").string()
                                       << R"("
shutdown_grace = "5s"

[[subscriptions]]
topic_name = "orders"
subscription_name = "billing"
connection_string = "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true"

  [[subscriptions.handlers]]
  subject = "Orders/Created"
  exec = ["/bin/true"]

[admin]
enabled = false
)";
  }

  void TearDown() override {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  /// Starts `metro run --emulator` with stdout and stderr in files and `extra_env` added.
  void start(const std::vector<std::string>& extra_env) {
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
      std::string entry = *e;
      if (entry.rfind("NOTIFY_SOCKET=", 0) == 0 || entry.rfind("JOURNAL_STREAM=", 0) == 0 ||
          entry.rfind("WATCHDOG_", 0) == 0 || entry.rfind("METRO_LOG", 0) == 0)
        continue;
      env.push_back(entry);
    }
    env.insert(env.end(), extra_env.begin(), extra_env.end());
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);

    std::string config = (dir_ / "metro.toml").string();
    std::vector<std::string> args = {METRO_BIN,         "run", "--config", config, "--emulator",
                                     "--emulator-port", "0"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, stdout_path().c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&actions, stderr_fd_, 2);
    ASSERT_EQ(posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), envp.data()), 0);
    posix_spawn_file_actions_destroy(&actions);
  }

  /// Opens the file metro's stderr will be; its "device:inode", as systemd puts it in
  /// JOURNAL_STREAM.
  std::string open_stderr() {
    stderr_fd_ = open(stderr_path().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    struct stat st {};
    fstat(stderr_fd_, &st);
    return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  }

  /// Sends SIGTERM and waits for the exit; the exit status, or -1.
  int stop() {
    kill(pid_, SIGTERM);
    int status = 0;
    bool exited =
        metro::test::wait_until([&] { return waitpid(pid_, &status, WNOHANG) == pid_; }, 60s);
    if (!exited) return -1;
    pid_ = -1;
    close(stderr_fd_);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  fs::path stdout_path() const { return dir_ / "stdout.log"; }
  fs::path stderr_path() const { return dir_ / "stderr.log"; }

  fs::path dir_;
  pid_t pid_ = -1;
  int stderr_fd_ = -1;
};

/// systemd's end of the notify protocol: a bound unix datagram socket.
class NotifySocket {
 public:
  explicit NotifySocket(const fs::path& path) : path_(path) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    path.string().copy(address.sun_path, sizeof(address.sun_path) - 1);
    bound_ = bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~NotifySocket() { close(fd_); }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  bool bound() const { return bound_; }

  /// Reads datagrams until one contains `needle` or `timeout` passes; that datagram, or "".
  std::string wait_for(const std::string& needle, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buffer[4096];
      auto n = recv(fd_, buffer, sizeof(buffer), 0);
      if (n <= 0) continue;
      std::string datagram(buffer, static_cast<std::size_t>(n));
      received_.push_back(datagram);
      if (datagram.find(needle) != std::string::npos) return datagram;
    }
    return "";
  }

  const std::vector<std::string>& received() const { return received_; }

 private:
  fs::path path_;
  int fd_ = -1;
  bool bound_ = false;
  std::vector<std::string> received_;
};

TEST_F(RunFixture, TellsSystemdItIsReadyPingsTheWatchdogAndSaysItIsStopping) {
  NotifySocket notify(dir_ / "notify.sock");
  ASSERT_TRUE(notify.bound());
  auto journal = open_stderr();
  start({"NOTIFY_SOCKET=" + (dir_ / "notify.sock").string(), "JOURNAL_STREAM=" + journal,
         "WATCHDOG_USEC=400000"});

  auto ready = notify.wait_for("READY=1", 90s);
  ASSERT_NE(ready, "") << read_file(stderr_path());
  EXPECT_NE(ready.find("STATUS=consuming 1 subscription(s)"), std::string::npos) << ready;
  // Readiness comes once the subscription is connected: never a READY before its status.
  for (const auto& datagram : notify.received()) {
    if (datagram == ready) break;
    EXPECT_EQ(datagram.find("READY=1"), std::string::npos);
  }
  EXPECT_NE(notify.wait_for("WATCHDOG=1", 20s), "");

  kill(pid_, SIGTERM);
  auto stopping = notify.wait_for("STOPPING=1", 30s);
  ASSERT_NE(stopping, "");
  // shutdown_grace (5 s) + 30 s for the settlements.
  EXPECT_NE(stopping.find("EXTEND_TIMEOUT_USEC=35000000"), std::string::npos) << stopping;
  EXPECT_EQ(stop(), 0) << read_file(stderr_path());
}

TEST_F(RunFixture, WritesJournalLinesWhenStderrIsTheJournal) {
  start({"JOURNAL_STREAM=" + open_stderr()});
  ASSERT_TRUE(metro::test::wait_until(
      [&] { return read_file(stdout_path()).find("metro running:") != std::string::npos; }, 90s));
  ASSERT_EQ(stop(), 0);

  auto log = read_file(stderr_path());
  EXPECT_NE(log.find("<6>SIGTERM: stopping"), std::string::npos) << log;
  std::istringstream lines(log);
  std::string line;
  std::regex journal_line(R"(<[0-7]>.*)");
  while (std::getline(lines, line)) {
    // A priority prefix and the message; journald adds the time.
    EXPECT_TRUE(std::regex_match(line, journal_line)) << line;
  }
}

TEST_F(RunFixture, KeepsItsOwnTimestampsWhenStderrIsNotTheJournal) {
  // Without NOTIFY_SOCKET nothing is sent, and metro runs as usual. JOURNAL_STREAM names another
  // file, as when systemd's stderr was redirected by a wrapper.
  open_stderr();
  start({"JOURNAL_STREAM=1:1"});
  ASSERT_TRUE(metro::test::wait_until(
      [&] { return read_file(stdout_path()).find("metro running:") != std::string::npos; }, 90s));
  ASSERT_EQ(stop(), 0);

  auto log = read_file(stderr_path());
  std::regex timestamped(R"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} info +SIGTERM: stopping.*)");
  std::istringstream lines(log);
  std::string line;
  bool found = false;
  while (std::getline(lines, line)) found = found || std::regex_match(line, timestamped);
  EXPECT_TRUE(found) << log;
  EXPECT_EQ(log.find("<6>"), std::string::npos) << log;
}

}  // namespace
