// The exec handler: one child process per run, the task on stdin, the verdict in the exit code.

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <metro/dispatch/handler.hpp>
#include <metro/error.hpp>

extern char** environ;

namespace metro::dispatch {
namespace {

constexpr int kExitRetry = 75;  // EX_TEMPFAIL
constexpr std::size_t kStderrTail = 2048;

class ExecHandler : public Handler {
 public:
  explicit ExecHandler(std::vector<std::string> command) : command_(std::move(command)) {
    if (command_.empty()) throw InvalidArgument("an exec handler needs a command");
  }

  Result run(const Task& task, std::chrono::milliseconds timeout) override {
    auto start = std::chrono::steady_clock::now();
    auto elapsed = [&] {
      return std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::steady_clock::now() - start);
    };
    int in[2];
    int err[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
      return {Outcome::kRetry, std::string("cannot create pipes: ") + std::strerror(errno),
              elapsed()};
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in[0], 0);
    posix_spawn_file_actions_adddup2(&actions, err[1], 2);
    posix_spawnattr_t attributes;
    posix_spawnattr_init(&attributes);
    // Its own process group (to kill it whole), and no signal blocked even if metro blocks some.
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK);
    posix_spawnattr_setpgroup(&attributes, 0);
    sigset_t unblocked;
    sigemptyset(&unblocked);
    posix_spawnattr_setsigmask(&attributes, &unblocked);
    std::vector<char*> argv;
    for (auto& a : command_) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    int rc = posix_spawnp(&pid, argv[0], &actions, &attributes, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
    close(in[0]);
    close(err[1]);
    if (rc != 0) {
      close(in[1]);
      close(err[0]);
      return {Outcome::kFailure, "cannot run " + command_.front() + ": " + std::strerror(rc),
              elapsed()};
    }
    // Write the task (ignoring a child that does not read it), then collect stderr until exit.
    auto json = to_json(task);
    signal(SIGPIPE, SIG_IGN);
    for (std::size_t written = 0; written < json.size();) {
      auto n = write(in[1], json.data() + written, json.size() - written);
      if (n <= 0) break;
      written += static_cast<std::size_t>(n);
    }
    close(in[1]);
    std::string tail;
    bool timed_out = false;
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    while (true) {
      auto left = timeout - elapsed();
      if (left.count() <= 0) {
        timed_out = true;
        break;
      }
      pollfd p{err[0], POLLIN, 0};
      int ready = poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left.count(), 1000)));
      if (ready > 0) {
        char chunk[4096];
        auto n = read(err[0], chunk, sizeof(chunk));
        if (n > 0) {
          tail.append(chunk, static_cast<std::size_t>(n));
          if (tail.size() > kStderrTail) tail.erase(0, tail.size() - kStderrTail);
          continue;
        }
        if (n == 0) break;  // stderr closed: the process is ending
      }
    }
    int status = 0;
    auto kill_for_timeout = [&]() -> Result {
      kill(-pid, SIGKILL);
      waitpid(pid, &status, 0);
      close(err[0]);
      return {Outcome::kRetry,
              "timed out after " + std::to_string(timeout.count()) + " ms and was killed",
              elapsed()};
    };
    if (timed_out) return kill_for_timeout();
    // stderr is closed; wait for the exit, still bounded by the timeout.
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (elapsed() >= timeout) return kill_for_timeout();
      pollfd none{-1, 0, 0};
      poll(&none, 0, 5);
    }
    close(err[0]);
    while (!tail.empty() && (tail.back() == '\n' || tail.back() == '\r')) tail.pop_back();
    auto with_stderr = [&](std::string why) { return tail.empty() ? why : why + ": " + tail; };
    if (WIFEXITED(status)) {
      int code = WEXITSTATUS(status);
      if (code == 0) return {Outcome::kSuccess, {}, elapsed()};
      if (code == kExitRetry)
        return {Outcome::kRetry, with_stderr("asked to retry (exit 75)"), elapsed()};
      return {Outcome::kFailure, with_stderr("exited with " + std::to_string(code)), elapsed()};
    }
    return {Outcome::kFailure, with_stderr("killed by signal " + std::to_string(WTERMSIG(status))),
            elapsed()};
  }

 private:
  std::vector<std::string> command_;
};

}  // namespace

std::unique_ptr<Handler> make_exec_handler(std::vector<std::string> command) {
  return std::make_unique<ExecHandler>(std::move(command));
}

}  // namespace metro::dispatch
