// The exec handler: one child process per run, the task on stdin, the verdict in the exit status.
// The task is written as the child reads it and stderr is read as it comes, both in one poll
// loop with the child's exit: the run ends when the child exits (or its timeout passes), not when
// its pipes close, so a background child that keeps them open does not hold the worker.

#include <cerrno>
#include <csignal>
#include <cstring>
#include <set>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <metro/dispatch/handler.hpp>
#include <metro/error.hpp>

#include "../common/thread_annotations.hpp"

extern char** environ;

namespace metro::dispatch {
namespace {

constexpr int kExitRetry = 75;  // EX_TEMPFAIL
constexpr std::size_t kStderrTail = 2048;
constexpr int kPollSlice = 100;  // ms; a poll never waits longer (the timeout is checked).

/// Owns a file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

/// A pipe whose two ends close on every path.
struct Pipe {
  Fd read;
  Fd write;
  bool open() {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return false;
    read.reset(fds[0]);
    write.reset(fds[1]);
    return true;
  }
};

/// Blocks SIGPIPE on this thread for its scope, so writing to a child that closed its stdin
/// fails with EPIPE instead of killing metro; a SIGPIPE raised meanwhile is consumed.
class SigpipeBlock {
 public:
  SigpipeBlock() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~SigpipeBlock() {
    timespec zero{0, 0};
    while (sigtimedwait(&pipe_, nullptr, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;

 private:
  sigset_t pipe_{};
  sigset_t old_{};
};

int open_pidfd(pid_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
#else
  (void)pid;
  return -1;
#endif
}

class ExecHandler : public Handler {
 public:
  explicit ExecHandler(std::vector<std::string> command) : command_(std::move(command)) {
    if (command_.empty()) throw InvalidArgument("an exec handler needs a command");
  }

  void interrupt() override {
    MutexLock lock(mutex_);
    interrupted_ = true;
    for (auto pid : running_) ::kill(-pid, SIGKILL);
  }

  Result run(const Task& task, std::chrono::milliseconds timeout) override {
    auto start = std::chrono::steady_clock::now();
    auto elapsed = [&] {
      return std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::steady_clock::now() - start);
    };
    Pipe in;
    Pipe err;
    if (!in.open() || !err.open()) {
      return {Outcome::kRetry, std::string("cannot create pipes: ") + std::strerror(errno),
              elapsed()};
    }
    auto json = to_json(task);
    SigpipeBlock no_sigpipe;  // Before the spawn: the child gets an empty mask (below).
    pid_t pid = spawn(in.read.get(), err.write.get(), task.trace_parent);
    in.read.reset();
    err.write.reset();
    if (pid < 0) {
      return {Outcome::kFailure, "cannot run " + command_.front() + ": " + std::strerror(-pid),
              elapsed()};
    }
    {
      MutexLock lock(mutex_);
      running_.insert(pid);
      if (interrupted_) ::kill(-pid, SIGKILL);
    }
    Fd exit_fd(open_pidfd(pid));
    fcntl(in.write.get(), F_SETFL, O_NONBLOCK);
    fcntl(err.read.get(), F_SETFL, O_NONBLOCK);
    std::size_t written = 0;
    if (json.empty()) in.write.reset();
    std::string tail;
    auto keep = [&](const char* data, std::size_t n) {
      tail.append(data, n);
      if (tail.size() > kStderrTail) tail.erase(0, tail.size() - kStderrTail);
    };
    auto drain = [&] {  // Whatever stderr holds now, without waiting for more.
      char chunk[4096];
      while (err.read) {
        auto n = ::read(err.read.get(), chunk, sizeof(chunk));
        if (n > 0) {
          keep(chunk, static_cast<std::size_t>(n));
          continue;
        }
        if (n == 0) err.read.reset();
        break;
      }
    };
    int status = 0;
    bool exited = false;
    bool timed_out = false;
    while (!exited) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      auto left = timeout - elapsed();
      if (left.count() <= 0) {
        timed_out = true;
        break;
      }
      pollfd fds[3];
      nfds_t n = 0;
      if (exit_fd) fds[n++] = {exit_fd.get(), POLLIN, 0};
      if (err.read) fds[n++] = {err.read.get(), POLLIN, 0};
      if (in.write) fds[n++] = {in.write.get(), POLLOUT, 0};
      // Without a pidfd the exit is only seen by waitpid: poll in short slices then.
      int slice = exit_fd ? kPollSlice : 10;
      ::poll(fds, n, static_cast<int>(std::min<std::int64_t>(left.count(), slice)));
      drain();
      if (in.write) {
        auto w = ::write(in.write.get(), json.data() + written, json.size() - written);
        if (w > 0) written += static_cast<std::size_t>(w);
        // Done, or the child will not read it (EPIPE): close, so it sees the end.
        if (written == json.size() || (w < 0 && errno != EAGAIN && errno != EINTR)) {
          in.write.reset();
        }
      }
    }
    if (timed_out) {
      ::kill(-pid, SIGKILL);
      waitpid(pid, &status, 0);
    }
    drain();
    bool interrupted = false;
    {
      MutexLock lock(mutex_);
      running_.erase(pid);
      interrupted = interrupted_;
    }
    if (timed_out) {
      return {Outcome::kRetry,
              "timed out after " + std::to_string(timeout.count()) + " ms and was killed",
              elapsed()};
    }
    while (!tail.empty() && (tail.back() == '\n' || tail.back() == '\r')) tail.pop_back();
    auto with_stderr = [&](std::string why) { return tail.empty() ? why : why + ": " + tail; };
    if (WIFEXITED(status)) {
      int code = WEXITSTATUS(status);
      if (code == 0) return {Outcome::kSuccess, {}, elapsed()};
      if (code == kExitRetry)
        return {Outcome::kRetry, with_stderr("asked to retry (exit 75)"), elapsed()};
      return {Outcome::kFailure, with_stderr("exited with " + std::to_string(code)), elapsed()};
    }
    if (interrupted && WTERMSIG(status) == SIGKILL) {
      return {Outcome::kRetry, "interrupted: metro was stopping", elapsed()};
    }
    return {Outcome::kFailure, with_stderr("killed by signal " + std::to_string(WTERMSIG(status))),
            elapsed()};
  }

 private:
  /// Starts the command with `stdin_fd` as stdin and `stderr_fd` as stderr, in a process group of
  /// its own (to kill it whole) and with no signal blocked. The pid, or -errno.
  pid_t spawn(int stdin_fd, int stderr_fd, const std::string& trace_parent) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, stdin_fd, 0);
    posix_spawn_file_actions_adddup2(&actions, stderr_fd, 2);
    posix_spawnattr_t attributes;
    posix_spawnattr_init(&attributes);
    posix_spawnattr_setflags(
        &attributes, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    posix_spawnattr_setpgroup(&attributes, 0);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attributes, &none);
    sigset_t defaults;
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGPIPE);
    posix_spawnattr_setsigdefault(&attributes, &defaults);
    std::vector<char*> argv;
    for (auto& a : command_) argv.push_back(a.data());
    argv.push_back(nullptr);
    // metro's environment, with TRACEPARENT the task's (never one metro itself was given).
    std::string traceparent = "TRACEPARENT=" + trace_parent;
    std::vector<char*> env;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
      if (std::strncmp(*e, "TRACEPARENT=", 12) != 0) env.push_back(*e);
    }
    if (!trace_parent.empty()) env.push_back(traceparent.data());
    env.push_back(nullptr);
    pid_t pid = 0;
    int rc = posix_spawnp(&pid, argv[0], &actions, &attributes, argv.data(), env.data());
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
    return rc == 0 ? pid : -rc;
  }

  std::vector<std::string> command_;
  Mutex mutex_;
  std::set<pid_t> running_ GUARDED_BY(mutex_);  // Process groups of the runs under way.
  bool interrupted_ GUARDED_BY(mutex_) = false;
};

}  // namespace

std::unique_ptr<Handler> make_exec_handler(std::vector<std::string> command) {
  return std::make_unique<ExecHandler>(std::move(command));
}

}  // namespace metro::dispatch
