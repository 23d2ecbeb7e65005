#pragma once

// What the benchmarks against an emulator share: the emulator's connection string, a paced
// publisher in a process of its own (so that the CPU time a benchmark reads with getrusage is the
// cost of what it measures, not of publishing), CPU time and context switches of this process,
// and percentiles.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <metro/sb/client.hpp>

extern char** environ;

namespace bench {

inline std::string connection_string(const std::string& port) {
  return "Endpoint=sb://localhost:" + port +
         ";SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
         "UseDevelopmentEmulator=true";
}

/// Wall-clock nanoseconds: comparable across processes.
inline std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// The body every benchmark message carries: its subject and when it was sent.
inline std::string timed_body() {
  return R"({"subject": "Bench/Type/Noop", "sent_ns": )" + std::to_string(now_ns()) + "}";
}

/// CPU time (user + system, every thread) and context switches of this process so far.
struct Usage {
  double cpu_s = 0;
  long voluntary = 0;    // Context switches: waits (futex, poll, …).
  long involuntary = 0;  // Context switches: preemptions.
  static Usage of(int who) {
    rusage u{};
    getrusage(who, &u);
    auto seconds = [](const timeval& t) {
      return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
    };
    return {seconds(u.ru_utime) + seconds(u.ru_stime), u.ru_nvcsw, u.ru_nivcsw};
  }
  static Usage self() { return of(RUSAGE_SELF); }
  Usage operator-(const Usage& o) const {
    return {cpu_s - o.cpu_s, voluntary - o.voluntary, involuntary - o.involuntary};
  }
};

/// Publishes `n` messages at `rate` per second, round robin over `entities`, in batches sent every
/// 5 ms. The publisher process's main.
inline int publish_paced(const std::string& port, const std::vector<std::string>& entities, int n,
                         int rate) {
  metro::sb::Client client(connection_string(port));
  std::vector<metro::sb::Sender> senders;
  for (const auto& e : entities) senders.push_back(client.create_sender(e));
  int per_tick = std::max(1, rate / 200);
  auto tick = std::chrono::nanoseconds(1000000000LL * per_tick / rate);
  auto next = std::chrono::steady_clock::now();
  int sent = 0;
  for (std::size_t round = 0; sent < n; ++round) {
    std::vector<metro::sb::Message> batch;
    for (int i = 0; i < per_tick && sent < n; ++i, ++sent) {
      metro::sb::Message m;
      m.body = timed_body();
      batch.push_back(std::move(m));
    }
    senders[round % senders.size()].send(batch);
    next += tick;
    std::this_thread::sleep_until(next);
  }
  client.close();
  return 0;
}

/// Runs `self publish <port> <n> <rate> <entity>...` (this program's own publisher mode) as a
/// child process; returns its pid.
inline pid_t spawn_publisher(const std::string& self, const std::string& port,
                             const std::vector<std::string>& entities, int n, int rate) {
  std::vector<std::string> args{self, "publish", port, std::to_string(n), std::to_string(rate)};
  args.insert(args.end(), entities.begin(), entities.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv.data(), environ) != 0) {
    throw std::runtime_error("cannot start the publisher " + self);
  }
  return pid;
}

/// Waits for the publisher; throws when it failed.
inline void wait_publisher(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error("the publisher failed");
  }
}

/// The main of `publish <port> <n> <rate> <entity>...`; -1 when argv is not that.
inline int publisher_main(int argc, char** argv) {
  if (argc < 6 || std::string(argv[1]) != "publish") return -1;
  std::vector<std::string> entities(argv + 5, argv + argc);
  return publish_paced(argv[2], entities, std::stoi(argv[3]), std::stoi(argv[4]));
}

/// The `p` quantile (0..1) of `values`, sorted in place; 0 when empty.
inline double percentile(std::vector<double>& values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  auto i = static_cast<std::size_t>(p * static_cast<double>(values.size()));
  return values[std::min(values.size() - 1, i)];
}

}  // namespace bench
