// Celery handlers against real parts: messages/s through metro's service (route, record, defer,
// send the task, read its outcome, complete) with a no-op Celery task on 1 and 4 Celery worker
// processes, next to the same traffic through an exec handler (`/bin/true`), all on one emulator;
// and metro's CPU time per 1,000 messages (the C++ side must not be the bottleneck). Then the
// Celery client alone (send a task, read its outcome), without Service Bus.
// Starts its own redis-server, Celery workers (tests/celery/app) and, unless given a port, an
// emulator (`metro emulator`, its own process: its CPU is not metro's).
// Usage: bench_celery [N] [emulator port]

#include <atomic>
#include <condition_variable>
#include <iomanip>
#include <iostream>
#include <mutex>
#include <thread>

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <metro/config/config.hpp>
#include <metro/dispatch/service.hpp>
#include <metro/sb/client.hpp>

#include "../src/celery/celery_handler.hpp"
#include "../src/celery/client.hpp"
#include "../tests/celery/celery_support.hpp"

namespace {

using namespace std::chrono_literals;
using metro::celery::Client;
using metro::celery::TaskOutcome;
namespace fs = std::filesystem;

double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

struct Figures {
  double per_second = 0;
  double cpu_ms_per_1000 = 0;
  std::uint64_t failed = 0;
};

void print_row(const std::string& label, const std::string& processes, const Figures& f) {
  std::cout << "| " << label << " | " << processes << " | " << std::fixed << std::setprecision(0)
            << f.per_second << " | " << std::setprecision(0) << f.cpu_ms_per_1000 << " ms |"
            << (f.failed ? " (" + std::to_string(f.failed) + " failed)" : "") << std::endl;
}

// ---- through the service -------------------------------------------------------------------

struct Bench {
  fs::path dir;
  std::string connection;
  std::string broker;
  std::string backend;
  int runs = 0;
};

void publish(const std::string& connection, int n) {
  metro::sb::Client client(connection);
  auto sender = client.create_sender("bench-t1");
  std::vector<metro::sb::Message> batch;
  for (int i = 0; i < n; ++i) {
    metro::sb::Message m;
    m.body = R"({"subject": "Bench/Type/Noop", "i": )" + std::to_string(i) + "}";
    batch.push_back(std::move(m));
    if (batch.size() == 200 || i + 1 == n) {
      sender.send(batch);
      batch.clear();
    }
  }
}

/// Drains `n` preloaded messages through a service whose one handler is `handler` (a TOML
/// fragment); messages/s and the process's CPU per 1,000 messages while it drained.
Figures drain(Bench& b, const std::string& handler, int n) {
  publish(b.connection, n);
  auto ledger = b.dir / ("ledger-" + std::to_string(++b.runs) + ".db");
  auto config = metro::config::parse_config(
      "[metro]\nworkers = 8\nledger = \"sqlite://" + ledger.string() + "\"\n[celery]\nbroker = \"" +
          b.broker + "\"\nresult_backend = \"" + b.backend +
          "\"\n[[subscriptions]]\ntopic_name = \"bench-t1\"\nsubscription_name = \"metro\"\n"
          "connection_string = \"" +
          b.connection + "\"\n[[subscriptions.handlers]]\nsubject = \"Bench/Type/Noop\"\n" +
          handler + "\n[admin]\nenabled = false\n",
      "bench.toml");
  metro::dispatch::ServiceOptions options;
  options.handler_factory = std::make_shared<metro::celery::CeleryHandlers>(config.celery);
  metro::dispatch::Service service(config, options);
  auto cpu_before = cpu_seconds();
  auto start = std::chrono::steady_clock::now();
  service.start();
  auto total = static_cast<std::uint64_t>(n);
  while (service.counters().completed + service.counters().failed < total) {
    std::this_thread::sleep_for(2ms);
  }
  auto seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  Figures f;
  f.cpu_ms_per_1000 = (cpu_seconds() - cpu_before) * 1000.0 / (n / 1000.0);
  f.per_second = n / seconds;
  f.failed = service.counters().failed;
  service.stop(10s);
  return f;
}

// ---- the client alone ------------------------------------------------------------------------

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
Figures send(Client& client, const metro::celery::HandlerSpec& spec, int n, int in_flight) {
  Room room(in_flight);
  std::atomic<int> next{0};
  std::atomic<int> done{0};
  std::atomic<std::uint64_t> failed{0};
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
  f.per_second = n / seconds;
  f.cpu_ms_per_1000 = (cpu_seconds() - cpu_before) * 1000.0 / (n / 1000.0);
  f.failed = failed.load();
  return f;
}

metro::celery::HandlerSpec spec(metro::celery::HandlerSpec::Kind kind, std::string target) {
  metro::celery::HandlerSpec s;
  s.kind = kind;
  s.target = std::move(target);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  int n = argc > 1 ? std::stoi(argv[1]) : 2000;
  spdlog::set_level(spdlog::level::warn);
  Bench b;
  b.dir = fs::temp_directory_path() / ("metro-bench-celery-" + std::to_string(::getpid()));
  fs::remove_all(b.dir);
  fs::create_directories(b.dir);
  std::unique_ptr<metro::test::ChildProcess> emulator;
  std::string port = argc > 2 ? argv[2] : "";
  if (port.empty()) {
    emulator = std::make_unique<metro::test::ChildProcess>(
        std::vector<std::string>{METRO_BIN, "emulator", "--config",
                                 std::string(METRO_SOURCE_DIR) + "/bench/bus.toml", "--port", "0"},
        b.dir / "emulator.log");
    if (!emulator->wait_for("amqp=", 30s)) {
      std::cerr << "the emulator did not start\n" << emulator->output();
      return 1;
    }
    auto out = emulator->output();
    auto at = out.find("amqp=") + 5;
    port = out.substr(at, out.find_first_not_of("0123456789", at) - at);
  }
  b.connection = "Endpoint=sb://localhost:" + port +
                 ";SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
                 "UseDevelopmentEmulator=true";
  metro::test::RedisServer redis(b.dir / "redis");
  if (!redis.start()) {
    std::cerr << "redis-server did not start\n" << redis.log();
    return 1;
  }
  b.broker = redis.url(0);
  b.backend = redis.url(1);

  std::cout << "metro's service, " << n
            << " messages preloaded on one subscription, 8 workers, SQLite ledger:\n"
            << "| handler | Celery worker processes | messages/s | metro's CPU per 1,000 messages "
               "|\n| --- | --- | --- | --- |"
            << std::endl;
  drain(b, "exec = [\"/bin/true\"]", std::min(n, 200));  // Warm up: connections, page cache.
  print_row("`exec = [\"/bin/true\"]`", "—", drain(b, "exec = [\"/bin/true\"]", n));
  const std::pair<std::string, std::string> kinds[] = {
      {"`celery = \"tests.noop\"`", "celery = \"tests.noop\""},
      {"`python = \"celery_handlers.noop\"`", "python = \"celery_handlers.noop\""}};
  for (int processes : {1, 4}) {
    metro::test::CeleryWorker worker(b.dir / ("worker-" + std::to_string(processes)), b.broker,
                                     b.backend, "celery", processes);
    if (!worker.wait_ready()) {
      std::cerr << "the Celery worker did not start\n" << worker.log();
      return 1;
    }
    for (const auto& [label, handler] : kinds) {
      drain(b, handler, std::min(n, 200));  // Warm up: imports in each worker process.
      print_row(label, std::to_string(processes), drain(b, handler, n));
    }
  }

  std::cout << "\nthe Celery client alone (no Service Bus, no ledger), " << n
            << " tasks, at most 64 in flight:\n"
            << "| task | Celery worker processes | tasks/s | metro's CPU per 1,000 tasks |\n"
            << "| --- | --- | --- | --- |" << std::endl;
  metro::celery::ClientOptions options;
  options.broker = metro::celery::parse_redis_url(b.broker);
  options.result_backend = metro::celery::parse_redis_url(b.backend);
  for (int processes : {1, 4}) {
    metro::test::CeleryWorker worker(b.dir / ("client-worker-" + std::to_string(processes)),
                                     b.broker, b.backend, "celery", processes);
    if (!worker.wait_ready()) {
      std::cerr << "the Celery worker did not start\n" << worker.log();
      return 1;
    }
    Client client(options);
    for (const auto& [label, s] :
         {std::pair{std::string("`celery = \"tests.noop\"`"),
                    spec(metro::celery::HandlerSpec::Kind::kCelery, "tests.noop")},
          std::pair{std::string("`python = \"celery_handlers.noop\"`"),
                    spec(metro::celery::HandlerSpec::Kind::kPython, "celery_handlers.noop")}}) {
      send(client, s, std::min(n, 200), 64);  // Warm up.
      print_row(label, std::to_string(processes), send(client, s, n, 64));
    }
  }
  fs::remove_all(b.dir);
  return 0;
}
