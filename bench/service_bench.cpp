// The service (route, record, defer, run a no-op C++ handler, complete) against a running
// emulator: messages/s with 1 and with 8 subscriptions draining a preloaded backlog; the
// handler-start latency (publish → handler start, p50/p99/p99.9) with 1 and 8 subscriptions at a
// steady 2,000 messages/s; and a paced run at 1,000 messages/s on one subscription. Each phase
// reports the CPU time of this process per message (getrusage: every thread of the service; the
// paced publishers run as child processes, `bench_service publish …`, and are not counted) and
// its context switches per message.
//
// usage: bench_service <emulator port> [N] [workers] [phases]
//   phases: comma-separated, of drain1, drain8, latency1, latency8, paced (default: all)
// Prints one JSON line. bench/run runs it against bench/bus.toml.

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <metro/config/config.hpp>
#include <metro/dispatch/service.hpp>
#include <metro/sb/client.hpp>

#include "bench_support.hpp"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::string g_port;
std::string g_connection;
std::string g_self;
std::filesystem::path g_dir;

void publish(const std::string& topic, int n) {
  metro::sb::Client client(g_connection);
  auto sender = client.create_sender(topic);
  std::vector<metro::sb::Message> batch;
  for (int i = 0; i < n; ++i) {
    metro::sb::Message m;
    m.body = bench::timed_body();
    batch.push_back(std::move(m));
    if (batch.size() == 200 || i + 1 == n) {
      sender.send(batch);
      batch.clear();
    }
  }
  client.close();
}

std::string topic(int s) { return "bench-t" + std::to_string(s); }

metro::config::Config config_for(int subscriptions, int workers, const std::string& ledger) {
  std::string text = "[metro]\nworkers = " + std::to_string(workers) + "\nledger = \"sqlite://" +
                     (g_dir / ledger).string() + "\"\n";
  // METRO_BENCH_DEFER=when-slow measures adaptive deferral (a no-op handler is never slow).
  if (const char* defer = std::getenv("METRO_BENCH_DEFER")) {
    text += std::string("defer = \"") + defer + "\"\n";
  }
  for (int s = 1; s <= subscriptions; ++s) {
    text += "[[subscriptions]]\ntopic_name = \"" + topic(s) +
            "\"\nsubscription_name = \"metro\"\nconnection_string = \"" + g_connection +
            "\"\n[[subscriptions.handlers]]\nsubject = \"Bench/Type/Noop\"\nhandler = \"noop\"\n";
  }
  text += "[admin]\nenabled = false\n";
  return metro::config::parse_config(text, "bench.toml");
}

struct Latencies {
  std::mutex mutex;
  std::vector<double> ms;
  std::vector<std::pair<double, std::int64_t>> slow;  // Over 20 ms: (ms, when sent, unix ns).
  void add(const metro::dispatch::Task& task) {
    auto now = bench::now_ns();
    auto sent = nlohmann::json::parse(task.body).at("sent_ns").get<std::int64_t>();
    auto latency = static_cast<double>(now - sent) / 1e6;
    std::lock_guard lock(mutex);
    ms.push_back(latency);
    if (latency > 20) slow.emplace_back(latency, sent);
  }
  void clear() {
    std::lock_guard lock(mutex);
    ms.clear();
    slow.clear();
  }
  /// The slow handler starts, as "HH:MM:SS.mmm sent: N ms", the slowest 10 (for matching them
  /// with traces of the same run).
  nlohmann::json slowest() {
    std::lock_guard lock(mutex);
    std::sort(slow.begin(), slow.end(), std::greater<>());
    nlohmann::json out = nlohmann::json::array();
    for (std::size_t i = 0; i < slow.size() && i < 10; ++i) {
      auto ms_of_day = slow[i].second / 1000000 % 86400000;
      char text[64];
      std::snprintf(text, sizeof text, "%02lld:%02lld:%02lld.%03lld sent: %.1f ms",
                    static_cast<long long>(ms_of_day / 3600000),
                    static_cast<long long>(ms_of_day / 60000 % 60),
                    static_cast<long long>(ms_of_day / 1000 % 60),
                    static_cast<long long>(ms_of_day % 1000), slow[i].first);
      out.push_back(text);
    }
    return out;
  }
  double percentile(double p) {
    std::lock_guard lock(mutex);
    return bench::percentile(ms, p);
  }
};

void wait_completed(metro::dispatch::Service& service, std::uint64_t total) {
  while (service.counters().completed < total) std::this_thread::sleep_for(2ms);
}

/// What one phase measured.
nlohmann::json cost(const bench::Usage& used, std::uint64_t messages) {
  auto per = [&](double v) { return v / static_cast<double>(messages); };
  auto rounded = [](double v, double unit) { return std::round(v / unit) * unit; };
  return {
      {"cpu_us_per_message", rounded(per(used.cpu_s) * 1e6, 0.1)},
      {"voluntary_switches_per_message", rounded(per(static_cast<double>(used.voluntary)), 0.01)},
      {"involuntary_switches_per_message",
       rounded(per(static_cast<double>(used.involuntary)), 0.01)}};
}

/// Drains a preloaded backlog of `n` messages spread over `subscriptions`.
nlohmann::json drain(int subscriptions, int n, int workers) {
  for (int s = 1; s <= subscriptions; ++s) publish(topic(s), n / subscriptions);
  auto total = static_cast<std::uint64_t>(n / subscriptions * subscriptions);
  metro::dispatch::ServiceOptions options;
  options.functions = {{"noop", [](const metro::dispatch::Task&) {}}};
  metro::dispatch::Service service(
      config_for(subscriptions, workers, "drain-" + std::to_string(subscriptions) + ".db"),
      options);
  auto before = bench::Usage::self();
  auto start = Clock::now();
  service.start();
  wait_completed(service, total);
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  auto used = bench::Usage::self() - before;
  service.stop(10s);
  auto out = cost(used, total);
  out["per_s"] = std::lround(static_cast<double>(total) / seconds);
  return out;
}

/// The service on `subscriptions` topics while a publisher process sends `n` messages at `rate`
/// per second, round robin over them.
nlohmann::json paced(int subscriptions, int n, int rate, int workers, const std::string& name) {
  Latencies latencies;
  metro::dispatch::ServiceOptions options;
  options.functions = {{"noop", [&](const metro::dispatch::Task& t) { latencies.add(t); }}};
  metro::dispatch::Service service(config_for(subscriptions, workers, name + ".db"), options);
  service.start();
  // Warm up (connections, links, the ledger's pages) before measuring.
  constexpr int kWarmUp = 100;
  for (int s = 1; s <= subscriptions; ++s) publish(topic(s), kWarmUp);
  auto warm = static_cast<std::uint64_t>(kWarmUp * subscriptions);
  wait_completed(service, warm);
  latencies.clear();
  std::vector<std::string> topics;
  for (int s = 1; s <= subscriptions; ++s) topics.push_back(topic(s));
  auto before = bench::Usage::self();
  auto start = Clock::now();
  auto publisher = bench::spawn_publisher(g_self, g_port, topics, n, rate);
  wait_completed(service, warm + static_cast<std::uint64_t>(n));
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  auto used = bench::Usage::self() - before;
  bench::wait_publisher(publisher);
  service.stop(10s);
  auto out = cost(used, static_cast<std::uint64_t>(n));
  out["rate_per_s"] = rate;
  out["achieved_per_s"] = std::lround(static_cast<double>(n) / seconds);
  out["handler_start_p50_ms"] = latencies.percentile(0.50);
  out["handler_start_p99_ms"] = latencies.percentile(0.99);
  out["handler_start_p99_9_ms"] = latencies.percentile(0.999);
  out["handler_start_max_ms"] = latencies.percentile(1.0);
  out["handler_starts_over_20_ms"] = latencies.slow.size();
  if (!latencies.slow.empty()) out["slowest_handler_starts_utc"] = latencies.slowest();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (int rc = bench::publisher_main(argc, argv); rc >= 0) return rc;
  if (argc < 2) {
    std::cerr
        << "usage: bench_service <port> [N] [workers] [drain1,drain8,latency1,latency8,paced]\n";
    return 2;
  }
  int n = argc > 2 ? std::stoi(argv[2]) : 20000;
  int workers = argc > 3 ? std::stoi(argv[3]) : 8;
  std::string phases = argc > 4 ? argv[4] : "drain1,drain8,latency1,latency8,paced";
  auto wants = [&](const std::string& phase) {
    std::stringstream list(phases);
    for (std::string p; std::getline(list, p, ',');) {
      if (p == phase) return true;
    }
    return false;
  };
  spdlog::set_level(spdlog::level::warn);
  g_self = std::filesystem::canonical("/proc/self/exe").string();
  g_port = argv[1];
  g_connection = bench::connection_string(g_port);
  g_dir = std::filesystem::temp_directory_path() / ("metro-bench-" + std::to_string(::getpid()));
  std::filesystem::create_directories(g_dir);

  nlohmann::json out = {{"messages", n}, {"workers", workers}};
  if (wants("drain1")) out["drain_1_subscription"] = drain(1, n, workers);
  if (wants("drain8")) out["drain_8_subscriptions"] = drain(8, n, workers);
  if (wants("latency1")) out["latency_1_subscription"] = paced(1, n, 2000, workers, "latency-1");
  if (wants("latency8")) out["latency_8_subscriptions"] = paced(8, n, 2000, workers, "latency-8");
  if (wants("paced")) out["paced_1000_1_subscription"] = paced(1, n, 1000, workers, "paced");
  out["peak_rss_kib"] = [] {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_maxrss;
  }();
  std::filesystem::remove_all(g_dir);
  std::cout << out.dump() << std::endl;
  return 0;
}
