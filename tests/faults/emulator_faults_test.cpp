// The emulator (the `metro emulator` binary) when its journal's disk fills: a file-size limit
// (RLIMIT_FSIZE, set by the shell that starts it) makes every write past it fail as on a full
// disk. What must hold: what was acknowledged is stored; what could not be stored is refused
// with a clear AMQP error, never acknowledged; the log says so loudly; nothing is lost across a
// restart.
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <metro/sb/client.hpp>

#include "../support/test_support.hpp"

namespace metro::sb {
namespace {

using namespace std::chrono_literals;

#ifdef METRO_BIN

/// `metro emulator` as a child process, optionally under a file-size limit (KiB).
class EmulatorProcess {
 public:
  EmulatorProcess(const std::filesystem::path& config, const std::filesystem::path& data_dir,
                  const std::filesystem::path& log, int file_size_limit_kib) {
    int out[2];
    if (pipe(out) != 0) throw std::runtime_error("pipe");
    std::string command = "exec " + std::string(METRO_BIN) + " emulator --config " +
                          config.string() + " --port 0 --data-dir " + data_dir.string() + " 2>" +
                          log.string();
    if (file_size_limit_kib > 0) {
      // SIGXFSZ would kill it at the limit; ignored, the write fails with EFBIG instead.
      command = "trap '' XFSZ; ulimit -f " + std::to_string(file_size_limit_kib) + "; " + command;
    }
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], 1);
      close(out[0]);
      execl("/bin/bash", "bash", "-c", command.c_str(), nullptr);
      _exit(127);
    }
    close(out[1]);
    // `metro emulator listening: amqp=PORT`
    std::string text;
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (text.find('\n') == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      pollfd p{out[0], POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buffer[512];
      auto n = read(out[0], buffer, sizeof(buffer));
      if (n <= 0) break;
      text.append(buffer, static_cast<std::size_t>(n));
    }
    out_ = out[0];  // kept open: it writes more, and a closed pipe would kill it (SIGPIPE)
    auto at = text.find("amqp=");
    if (at == std::string::npos) throw std::runtime_error("the emulator did not start: " + text);
    port_ = static_cast<std::uint16_t>(std::stoi(text.substr(at + 5)));
  }

  ~EmulatorProcess() {
    kill_now();
    if (out_ >= 0) close(out_);
  }

  /// As a crash would.
  void kill_now() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  std::string connection_string() const {
    return "Endpoint=sb://localhost:" + std::to_string(port_) +
           ";SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
           "UseDevelopmentEmulator=true";
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::uint16_t port_ = 0;
};

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(EmulatorFaults, AFullDiskRefusesWhatItCannotStoreAndLosesNothingAcknowledged) {
  auto dir =
      std::filesystem::temp_directory_path() / ("metro-disk-full-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir / "data");
  std::ofstream(dir / "bus.toml") << "[[queues]]\nname = \"q\"\n";

  std::size_t accepted = 0;
  std::string refusal;
  {
    EmulatorProcess bus(dir / "bus.toml", dir / "data", dir / "full.log", 256);
    ClientOptions options;
    options.operation_timeout = 10s;
    Client client(bus.connection_string(), options);
    auto sender = client.create_sender("q");
    Message m;
    m.body = std::string(8 * 1024, 'x');
    for (int i = 0; i < 500 && refusal.empty(); ++i) {
      try {
        sender.send(m);
        ++accepted;
      } catch (const ServiceBusError& e) {
        EXPECT_EQ(e.condition(), "amqp:internal-error") << e.what();
        EXPECT_TRUE(e.is_transient());
        refusal = e.what();
      }
    }
    ASSERT_FALSE(refusal.empty()) << "every send was acknowledged though the disk is full";
    EXPECT_NE(refusal.find("journal"), std::string::npos) << refusal;
    EXPECT_GT(accepted, 0u);
    // Still full: the next one is refused too, for the same reason (not "within a transaction").
    try {
      sender.send(m);
      FAIL() << "acknowledged a send the journal cannot hold";
    } catch (const ServiceBusError& e) {
      EXPECT_EQ(std::string(e.what()).find("within a transaction"), std::string::npos) << e.what();
    }
    bus.kill_now();
  }
  auto log = read_file(dir / "full.log");
  EXPECT_NE(log.find("critical"), std::string::npos) << log;
  EXPECT_NE(log.find("cannot write the journal"), std::string::npos) << log;

  // Restarted with room: exactly what was acknowledged is there.
  EmulatorProcess bus(dir / "bus.toml", dir / "data", dir / "again.log", 0);
  Client client(bus.connection_string());
  auto receiver = client.create_receiver("q");
  std::size_t stored = 0;
  std::int64_t from = 1;
  while (true) {
    auto page = receiver.peek(from, 100);
    if (page.empty()) break;
    stored += page.size();
    from = page.back().sequence_number + 1;
  }
  EXPECT_EQ(stored, accepted);
  std::filesystem::remove_all(dir);
}

#endif  // METRO_BIN

}  // namespace
}  // namespace metro::sb
