// The service's drain with each ledger, and with several instances sharing a PostgreSQL ledger:
// a preloaded backlog of N messages on one subscription, a no-op C++ handler, drained by
//   - one instance with the SQLite ledger on disk,
//   - one, two and three instances sharing one PostgreSQL ledger (each instance a service of its
//     own, with its own connection to the bus and its own connection pool, in this process).
//
// usage: bench_instances <emulator port> <postgresql URL without database> [N] [workers]
// The databases bench_pg1, bench_pg2, bench_pg3 must exist (bench/run makes them). Prints one
// JSON line.

#include <filesystem>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <thread>

#include <spdlog/spdlog.h>

#include <metro/config/config.hpp>
#include <metro/dispatch/service.hpp>
#include <metro/sb/client.hpp>

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::string g_connection;

void publish(int n) {
  metro::sb::Client client(g_connection);
  auto sender = client.create_sender("bench-t1");
  std::vector<metro::sb::Message> batch;
  for (int i = 0; i < n; ++i) {
    metro::sb::Message m;
    m.body = R"({"subject": "Bench/Type/Noop", "n": )" + std::to_string(i) + "}";
    batch.push_back(std::move(m));
    if (batch.size() == 200 || i + 1 == n) {
      sender.send(batch);
      batch.clear();
    }
  }
}

metro::config::Config config_for(const std::string& ledger, const std::string& id, int workers) {
  std::string text = "[metro]\nworkers = " + std::to_string(workers) + "\nledger = \"" + ledger +
                     "\"\ninstance_id = \"" + id +
                     "\"\n[[subscriptions]]\ntopic_name = \"bench-t1\"\n"
                     "subscription_name = \"metro\"\nconnection_string = \"" +
                     g_connection +
                     "\"\n[[subscriptions.handlers]]\nsubject = \"Bench/Type/Noop\"\n"
                     "handler = \"noop\"\n[admin]\nenabled = false\n";
  return metro::config::parse_config(text, "bench.toml");
}

/// Drains `n` preloaded messages with `instances` services on `ledger`; messages/s.
double drain(const std::string& ledger, int instances, int n, int workers) {
  publish(n);
  std::vector<std::unique_ptr<metro::dispatch::Service>> services;
  for (int i = 1; i <= instances; ++i) {
    metro::dispatch::ServiceOptions options;
    options.functions = {{"noop", [](const metro::dispatch::Task&) {}}};
    services.push_back(std::make_unique<metro::dispatch::Service>(
        config_for(ledger, "bench-" + std::to_string(i), workers), options));
  }
  auto start = Clock::now();
  std::vector<std::thread> starting;
  for (auto& s : services) starting.emplace_back([&s] { s->start(); });
  for (auto& t : starting) t.join();
  auto completed = [&] {
    std::uint64_t sum = 0;
    for (auto& s : services) sum += s->counters().completed;
    return sum;
  };
  // A drain that stalls (a lost bus or database) ends the run with the reason, not a hang.
  const auto deadline = start + 10min;
  while (completed() < static_cast<std::uint64_t>(n)) {
    if (Clock::now() > deadline) {
      throw std::runtime_error("the drain on " + ledger + " completed only " +
                               std::to_string(completed()) + " of " + std::to_string(n) +
                               " messages in 10 minutes");
    }
    std::this_thread::sleep_for(5ms);
  }
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (auto& s : services) s->stop(10s);
  return static_cast<double>(n) / seconds;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: bench_instances <port> <postgresql URL without database> [N] [workers]\n";
    return 2;
  }
  std::string pg = argv[2];
  int n = argc > 3 ? std::stoi(argv[3]) : 20000;
  int workers = argc > 4 ? std::stoi(argv[4]) : 8;
  spdlog::set_level(spdlog::level::warn);
  g_connection = "Endpoint=sb://localhost:" + std::string(argv[1]) +
                 ";SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
                 "UseDevelopmentEmulator=true";
  auto dir = std::filesystem::temp_directory_path() /
             ("metro-bench-instances-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  double sqlite = drain("sqlite://" + (dir / "ledger.db").string(), 1, n, workers);
  double pg1 = drain(pg + "bench_pg1", 1, n, workers);
  double pg2 = drain(pg + "bench_pg2", 2, n, workers);
  double pg3 = drain(pg + "bench_pg3", 3, n, workers);
  std::filesystem::remove_all(dir);
  std::cout << "{\"messages\":" << n << ",\"workers_per_instance\":" << workers
            << ",\"sqlite_1_instance_per_s\":" << static_cast<long>(sqlite)
            << ",\"postgres_1_instance_per_s\":" << static_cast<long>(pg1)
            << ",\"postgres_2_instances_per_s\":" << static_cast<long>(pg2)
            << ",\"postgres_3_instances_per_s\":" << static_cast<long>(pg3) << "}" << std::endl;
  return 0;
}
