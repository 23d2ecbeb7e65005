#pragma once

// Runs tests/integration/js/peer.js (the official JS SDK) as a child process and talks to it one
// JSON line at a time, with a timeout on every answer.

#include <chrono>
#include <stdexcept>
#include <string>

#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

namespace metro::testing {

class JsPeer {
 public:
  explicit JsPeer(const std::string& connection_string) {
    int in[2];
    int out[2];
    if (pipe(in) != 0 || pipe(out) != 0) throw std::runtime_error("pipe failed");
    pid_ = fork();
    if (pid_ == 0) {
      dup2(in[0], 0);
      dup2(out[1], 1);
      close(in[1]);
      close(out[0]);
      std::string script = std::string(METRO_SOURCE_DIR) + "/tests/integration/js/peer.js";
      execlp("node", "node", script.c_str(), connection_string.c_str(), nullptr);
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    to_ = in[1];
    from_ = out[0];
  }

  ~JsPeer() {
    close(to_);
    int status = 0;
    for (int i = 0; i < 100 && waitpid(pid_, &status, WNOHANG) == 0; ++i) usleep(50'000);
    if (waitpid(pid_, &status, WNOHANG) == 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
    }
    close(from_);
  }

  /// Sends a command and returns its answer; throws when none comes within `timeout`.
  nlohmann::json call(const nlohmann::json& command,
                      std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
    auto line = command.dump() + "\n";
    if (write(to_, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
      throw std::runtime_error("cannot write to the JS peer");
    }
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (auto newline = buffer_.find('\n'); newline != std::string::npos) {
        auto answer = buffer_.substr(0, newline);
        buffer_.erase(0, newline + 1);
        return nlohmann::json::parse(answer);
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) throw std::runtime_error("no answer from the JS peer to " + line);
      pollfd p{from_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char chunk[4096];
      auto n = read(from_, chunk, sizeof(chunk));
      if (n <= 0) throw std::runtime_error("the JS peer exited");
      buffer_.append(chunk, static_cast<std::size_t>(n));
    }
  }

 private:
  pid_t pid_ = -1;
  int to_ = -1;
  int from_ = -1;
  std::string buffer_;
};

}  // namespace metro::testing
