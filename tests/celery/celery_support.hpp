#pragma once

// Real parts for the Celery tests: redis-server on a free port and a Celery worker (Debian's
// python3-celery) running tests/celery/app, each a child process the test starts and kills.

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../src/celery/redis_connection.hpp"
#include "../support/test_support.hpp"

extern char** environ;

namespace metro::test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

inline std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

/// A TCP port nothing listens on right now.
inline std::uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  socklen_t length = sizeof(address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

/// A child process, its stdout and stderr appended to a file; killed when destroyed.
class ChildProcess {
 public:
  ChildProcess(std::vector<std::string> argv, fs::path output,
               const std::map<std::string, std::string>& env = {}, const fs::path& cwd = {})
      : output_(std::move(output)) {
    std::map<std::string, std::string> merged;
    for (char** e = environ; *e != nullptr; ++e) {
      std::string entry(*e);
      auto eq = entry.find('=');
      if (eq != std::string::npos) merged[entry.substr(0, eq)] = entry.substr(eq + 1);
    }
    for (const auto& [k, v] : env) merged[k] = v;
    std::vector<std::string> env_strings;
    for (const auto& [k, v] : merged) env_strings.push_back(k + "=" + v);
    std::vector<char*> envp;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, output_.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    if (!cwd.empty()) posix_spawn_file_actions_addchdir_np(&actions, cwd.c_str());
    posix_spawnattr_t attributes;
    posix_spawnattr_init(&attributes);
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP);  // Its own group: kill all.
    posix_spawnattr_setpgroup(&attributes, 0);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    if (posix_spawnp(&pid_, args[0], &actions, &attributes, args.data(), envp.data()) != 0) {
      pid_ = -1;
    }
    posix_spawnattr_destroy(&attributes);
    posix_spawn_file_actions_destroy(&actions);
  }
  ~ChildProcess() { kill(SIGKILL); }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  bool running() const { return pid_ > 0; }
  /// Signals the whole process group and reaps the child; its wait status (-1 when none ran).
  int kill(int signal) {
    if (pid_ <= 0) return -1;
    ::kill(-pid_, signal);
    int status = 0;
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(-pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(20ms);
    }
    pid_ = -1;
    return status;
  }
  std::string output() const { return read_text(output_); }
  bool wait_for(const std::string& text, std::chrono::milliseconds timeout = 60s) const {
    return wait_until([&] { return output().find(text) != std::string::npos; }, timeout);
  }

 private:
  fs::path output_;
  pid_t pid_ = -1;
};

/// redis-server on loopback; `kill9()` and `start()` again keep its port and directory.
class RedisServer {
 public:
  RedisServer(fs::path dir, std::vector<std::string> extra = {})
      : dir_(std::move(dir)), extra_(std::move(extra)), port_(free_port()) {
    fs::create_directories(dir_);
  }

  /// Starts and waits until it answers (with `password` when it has one).
  bool start(const std::string& password = {}) {
    std::vector<std::string> argv{"redis-server", "--port",    std::to_string(port_),
                                  "--bind",       "127.0.0.1", "--dir",
                                  dir_.string(),  "--save",    "",
                                  "--daemonize",  "no"};
    for (const auto& e : extra_) argv.push_back(e);
    process_ = std::make_unique<ChildProcess>(argv, dir_ / "redis.log");
    celery::RedisUrl url;
    url.host = "127.0.0.1";
    url.port = port_;
    if (!password.empty()) url.password = password;
    return wait_until(
        [&] {
          try {
            celery::RedisConnection::connect(url, celery::Clock::now() + 1s);
            return true;
          } catch (const celery::RedisError&) {
            return false;
          }
        },
        30s);
  }
  void kill9() { process_->kill(SIGKILL); }
  std::uint16_t port() const { return port_; }
  std::string url(int db, const std::string& userinfo = {}) const {
    return "redis://" + (userinfo.empty() ? "" : userinfo + "@") +
           "127.0.0.1:" + std::to_string(port_) + "/" + std::to_string(db);
  }
  std::string log() const { return read_text(dir_ / "redis.log"); }

 private:
  fs::path dir_;
  std::vector<std::string> extra_;
  std::uint16_t port_;
  std::unique_ptr<ChildProcess> process_;
};

/// A Celery worker running tests/celery/app/metro_test_app.py.
class CeleryWorker {
 public:
  CeleryWorker(const fs::path& dir, const std::string& broker, const std::string& backend,
               const std::string& queues = "celery", int concurrency = 2,
               const std::map<std::string, std::string>& extra_env = {}) {
    fs::create_directories(dir / "state");
    out_ = dir / "records.jsonl";
    std::string source = METRO_SOURCE_DIR;
    std::map<std::string, std::string> env{
        {"PYTHONPATH", source + "/python:" + source + "/tests/celery/app"},
        {"METRO_TEST_BROKER", broker},
        {"METRO_TEST_BACKEND", backend},
        {"METRO_TEST_OUT", out_.string()},
        {"METRO_TEST_STATE", (dir / "state").string()},
        {"PYTHONDONTWRITEBYTECODE", "1"}};
    for (const auto& [k, v] : extra_env) env[k] = v;
    state_ = dir / "state";
    log_ = dir / "worker.log";
    process_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{"/usr/bin/python3", "-m", "celery", "-A", "metro_test_app",
                                 "worker", "-c", std::to_string(concurrency), "-l", "info", "-Q",
                                 queues, "--without-gossip", "--without-mingle",
                                 "--without-heartbeat", "-n",
                                 "metro-test-" + std::to_string(::getpid()) + "@%h"},
        log_, env, source + "/tests/celery/app");
  }
  bool wait_ready() const { return process_->wait_for(" ready.", 90s); }
  void kill(int signal) { process_->kill(signal); }
  std::string log() const { return read_text(log_); }
  /// Where the test tasks keep their counters and flags (METRO_TEST_STATE).
  const fs::path& state_dir() const { return state_; }
  /// The JSON lines the test tasks and handlers wrote.
  std::vector<std::string> records() const {
    std::vector<std::string> lines;
    std::istringstream in(read_text(out_));
    for (std::string line; std::getline(in, line);) {
      if (!line.empty()) lines.push_back(line);
    }
    return lines;
  }

 private:
  fs::path out_;
  fs::path state_;
  fs::path log_;
  std::unique_ptr<ChildProcess> process_;
};

}  // namespace metro::test
