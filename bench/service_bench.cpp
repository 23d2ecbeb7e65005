// The service (route, record, defer, run a no-op C++ handler, complete) against a running
// emulator: messages/s with 1 and with 8 subscriptions draining a preloaded backlog, and the
// handler-start latency (publish → handler start) with 1 and 8 subscriptions at a steady
// publishing rate of 2,000 messages/s.
//
// usage: bench_service <emulator port> [N] [workers]
// Prints one JSON line. bench/run runs it against bench/bus.toml.

#include <algorithm>
#include <cstdlib>
#include <atomic>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <metro/config/config.hpp>
#include <metro/dispatch/service.hpp>
#include <metro/sb/client.hpp>

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string g_connection;
std::filesystem::path g_dir;

void publish(const std::string& topic, int n) {
  metro::sb::Client client(g_connection);
  auto sender = client.create_sender(topic);
  std::vector<metro::sb::Message> batch;
  for (int i = 0; i < n; ++i) {
    metro::sb::Message m;
    m.body = R"({"subject": "Bench/Type/Noop", "sent_ns": )" + std::to_string(now_ns()) + "}";
    batch.push_back(std::move(m));
    if (batch.size() == 200 || i + 1 == n) {
      sender.send(batch);
      batch.clear();
    }
  }
}

metro::config::Config config_for(int subscriptions, int workers, const std::string& ledger) {
  std::string text = "[metro]\nworkers = " + std::to_string(workers) + "\nledger = \"sqlite://" +
                     (g_dir / ledger).string() + "\"\n";
  // METRO_BENCH_DEFER=when-slow measures adaptive deferral (a no-op handler is never slow).
  if (const char* defer = std::getenv("METRO_BENCH_DEFER")) {
    text += std::string("defer = \"") + defer + "\"\n";
  }
  for (int s = 1; s <= subscriptions; ++s) {
    text += "[[subscriptions]]\ntopic_name = \"bench-t" + std::to_string(s) +
            "\"\nsubscription_name = \"metro\"\nconnection_string = \"" + g_connection +
            "\"\n[[subscriptions.handlers]]\nsubject = \"Bench/Type/Noop\"\nhandler = \"noop\"\n";
  }
  text += "[admin]\nenabled = false\n";
  return metro::config::parse_config(text, "bench.toml");
}

struct Latencies {
  std::mutex mutex;
  std::vector<double> ms;
  void add(const metro::dispatch::Task& task) {
    auto sent = nlohmann::json::parse(task.body).at("sent_ns").get<std::int64_t>();
    std::lock_guard lock(mutex);
    ms.push_back(static_cast<double>(now_ns() - sent) / 1e6);
  }
  double percentile(double p) {
    std::lock_guard lock(mutex);
    if (ms.empty()) return 0;
    std::sort(ms.begin(), ms.end());
    return ms[std::min(ms.size() - 1,
                       static_cast<std::size_t>(p * static_cast<double>(ms.size())))];
  }
};

/// Drains a preloaded backlog of `n` messages spread over `subscriptions`; messages/s.
double drain(int subscriptions, int n, int workers) {
  for (int s = 1; s <= subscriptions; ++s)
    publish("bench-t" + std::to_string(s), n / subscriptions);
  auto total = static_cast<std::uint64_t>(n / subscriptions * subscriptions);
  metro::dispatch::ServiceOptions options;
  options.functions = {{"noop", [](const metro::dispatch::Task&) {}}};
  metro::dispatch::Service service(
      config_for(subscriptions, workers, "drain-" + std::to_string(subscriptions) + ".db"),
      options);
  auto start = Clock::now();
  service.start();
  while (service.counters().completed < total) std::this_thread::sleep_for(5ms);
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  service.stop(10s);
  return static_cast<double>(total) / seconds;
}

/// Publishes `n` messages at `rate` messages/s, round robin over `subscriptions` topics, while the
/// service runs on them.
void latency(int subscriptions, int n, int rate, int workers, Latencies& latencies) {
  metro::dispatch::ServiceOptions options;
  options.functions = {{"noop", [&](const metro::dispatch::Task& t) { latencies.add(t); }}};
  metro::dispatch::Service service(
      config_for(subscriptions, workers, "latency-" + std::to_string(subscriptions) + ".db"),
      options);
  service.start();
  metro::sb::Client client(g_connection);
  std::vector<metro::sb::Sender> senders;
  for (int s = 1; s <= subscriptions; ++s) {
    senders.push_back(client.create_sender("bench-t" + std::to_string(s)));
  }
  constexpr int kPerTick = 10;
  auto tick = std::chrono::microseconds(1000000 * kPerTick / rate);
  auto next = Clock::now();
  int sent = 0;
  for (int round = 0; sent < n; ++round) {
    std::vector<metro::sb::Message> batch;
    for (int i = 0; i < kPerTick && sent < n; ++i, ++sent) {
      metro::sb::Message m;
      m.body = R"({"subject": "Bench/Type/Noop", "sent_ns": )" + std::to_string(now_ns()) + "}";
      batch.push_back(std::move(m));
    }
    senders[static_cast<std::size_t>(round % subscriptions)].send(batch);
    next += tick;
    std::this_thread::sleep_until(next);
  }
  while (service.counters().completed < static_cast<std::uint64_t>(n)) {
    std::this_thread::sleep_for(5ms);
  }
  service.stop(10s);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: bench_service <port> [N] [workers]\n";
    return 2;
  }
  int n = argc > 2 ? std::stoi(argv[2]) : 20000;
  int workers = argc > 3 ? std::stoi(argv[3]) : 8;
  spdlog::set_level(spdlog::level::warn);
  g_connection = "Endpoint=sb://localhost:" + std::string(argv[1]) +
                 ";SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
                 "UseDevelopmentEmulator=true";
  g_dir = std::filesystem::temp_directory_path() / ("metro-bench-" + std::to_string(::getpid()));
  std::filesystem::create_directories(g_dir);

  double one = drain(1, n, workers);
  double eight = drain(8, n, workers);
  constexpr int kRate = 2000;
  Latencies latency_one;
  Latencies latency_eight;
  latency(1, n, kRate, workers, latency_one);
  latency(8, n, kRate, workers, latency_eight);

  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::filesystem::remove_all(g_dir);
  std::cout << "{\"messages\":" << n << ",\"workers\":" << workers
            << ",\"metro_1_subscription_per_s\":" << static_cast<long>(one)
            << ",\"metro_8_subscriptions_per_s\":" << static_cast<long>(eight)
            << ",\"latency_rate_per_s\":" << kRate
            << ",\"handler_start_1_subscription_p50_ms\":" << latency_one.percentile(0.50)
            << ",\"handler_start_1_subscription_p99_ms\":" << latency_one.percentile(0.99)
            << ",\"handler_start_8_subscriptions_p50_ms\":" << latency_eight.percentile(0.50)
            << ",\"handler_start_8_subscriptions_p99_ms\":" << latency_eight.percentile(0.99)
            << ",\"peak_rss_kib\":" << usage.ru_maxrss << "}" << std::endl;
  return 0;
}
