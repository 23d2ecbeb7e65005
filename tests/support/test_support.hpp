#pragma once

// Helpers every suite that talks to real processes and sockets uses: waiting on a condition with a
// timeout (never sleep-and-hope) and running a shell command for its exit code and output.

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <utility>

#include <sys/wait.h>

namespace metro::test {

/// Polls `predicate` every 10 ms until it holds or `timeout` passes; its last answer.
template <class Predicate>
bool wait_until(Predicate predicate, std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (predicate()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return predicate();
}

/// Runs `command` with `sh -c`, stderr joined to stdout; its exit status and output.
inline std::pair<int, std::string> run_command(const std::string& command) {
  std::string output;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return {-1, "popen failed"};
  char buffer[4096];
  while (auto n = fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
  int status = pclose(pipe);
  return {WEXITSTATUS(status), output};
}

}  // namespace metro::test
