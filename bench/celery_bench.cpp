// metro's Celery producer against a real Celery worker: tasks per second through a no-op task
// with 1 and 4 worker processes, and metro's CPU time per 1,000 tasks (the C++ side must not be
// the bottleneck). Starts its own redis-server and workers (tests/celery/app).
// Usage: bench_celery [N] [in-flight]

#include <atomic>
#include <iomanip>
#include <iostream>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <sys/resource.h>

#include "../src/celery/celery_handler.hpp"
#include "../src/celery/client.hpp"
#include "../tests/celery/celery_support.hpp"

namespace {

using namespace std::chrono_literals;
using metro::celery::Client;
using metro::celery::TaskOutcome;

double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

struct Figures {
  double tasks_per_second = 0;
  double cpu_ms_per_1000 = 0;
  int failed = 0;
};

/// Room for tasks in flight (a mutex and a condition variable: libstdc++'s semaphore spins with
/// sched_yield, which would be counted as metro's CPU).
class Room {
 public:
  explicit Room(int n) : free_(n) {}
  void acquire() {
    std::unique_lock lock(mutex_);
    freed_.wait(lock, [&] { return free_ > 0; });
    --free_;
  }
  void release() {
    std::lock_guard lock(mutex_);
    ++free_;
    freed_.notify_one();
  }

 private:
  std::mutex mutex_;
  std::condition_variable freed_;
  int free_;
};

/// Sends `n` tasks with at most `in_flight` outstanding, from 8 sending threads.
Figures run(Client& client, metro::celery::HandlerSpec spec, int n, int in_flight) {
  Room room(in_flight);
  std::atomic<int> next{0};
  std::atomic<int> done{0};
  std::atomic<int> failed{0};
  auto cpu_before = cpu_seconds();
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> senders;
  for (int t = 0; t < 8; ++t) {
    senders.emplace_back([&] {
      for (int i = next++; i < n; i = next++) {
        room.acquire();
        metro::dispatch::Task task;
        task.handler = "bench";
        task.topic_name = "bench";
        task.subscription_name = "bench";
        task.sequence_number = i;
        task.body = R"({"subject":"Bench/Noop","i":)" + std::to_string(i) + "}";
        client.submit(metro::celery::task_message_for(task, spec), 120s,
                      [&](const TaskOutcome& outcome) {
                        if (outcome.status != TaskOutcome::Status::kSucceeded) ++failed;
                        ++done;
                        room.release();
                      });
      }
    });
  }
  for (auto& s : senders) s.join();
  metro::test::wait_until([&] { return done.load() >= n; }, 600s);
  auto seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  Figures f;
  f.tasks_per_second = n / seconds;
  f.cpu_ms_per_1000 = (cpu_seconds() - cpu_before) * 1000.0 / (n / 1000.0);
  f.failed = failed.load();
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  int n = argc > 1 ? std::stoi(argv[1]) : 5000;
  int in_flight = argc > 2 ? std::stoi(argv[2]) : 64;
  auto dir =
      std::filesystem::temp_directory_path() / ("metro-bench-celery-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  metro::test::RedisServer redis(dir / "redis");
  if (!redis.start()) {
    std::cerr << "redis-server did not start\n" << redis.log();
    return 1;
  }
  metro::celery::ClientOptions options;
  options.broker = metro::celery::parse_redis_url(redis.url(0));
  options.result_backend = metro::celery::parse_redis_url(redis.url(1));
  std::cout << "tasks: " << n << ", at most " << in_flight << " in flight\n";
  std::cout << "| task | worker processes | tasks/s | metro CPU per 1,000 tasks |\n";
  for (int processes : {1, 4}) {
    metro::test::CeleryWorker worker(dir / ("worker-" + std::to_string(processes)), redis.url(0),
                                     redis.url(1), "celery", processes);
    if (!worker.wait_ready()) {
      std::cerr << "the Celery worker did not start\n" << worker.log();
      return 1;
    }
    Client client(options);
    for (const auto& [label, spec] :
         {std::pair{std::string("celery = \"tests.noop\""),
                    metro::celery::HandlerSpec{
                        metro::celery::HandlerSpec::Kind::kCelery, "tests.noop", "celery", 0, {}}},
          std::pair{std::string("python = \"celery_handlers.noop\""),
                    metro::celery::HandlerSpec{metro::celery::HandlerSpec::Kind::kPython,
                                               "celery_handlers.noop",
                                               "celery",
                                               0,
                                               {}}}}) {
      run(client, spec, std::min(n, 200), in_flight);  // Warm up: imports, connections.
      auto f = run(client, spec, n, in_flight);
      std::cout << "| " << label << " | " << processes << " | " << std::fixed
                << std::setprecision(0) << f.tasks_per_second << " | " << std::setprecision(1)
                << f.cpu_ms_per_1000 << " ms |"
                << (f.failed ? " (" + std::to_string(f.failed) + " failed)" : "") << '\n';
    }
  }
  std::filesystem::remove_all(dir);
  return 0;
}
