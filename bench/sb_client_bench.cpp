// The C++ client against a running emulator: send (batched), receive + complete, and the
// deferral round trip metro makes (receive, defer, receive-by-sequence-number, complete in
// batches), each with the CPU time of this process per message (getrusage, every thread).
// `paced RATE` runs only the deferral round trip while a publisher process (`bench_sb_client
// publish …`, not counted) sends N messages at RATE per second: the client's cost of metro's four
// operations at that rate. Prints one JSON object.
// Usage: bench_sb_client <port> [N] [threads] [paced RATE]

#include <atomic>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <metro/sb/client.hpp>

#include "bench_support.hpp"

using namespace std::chrono_literals;
using metro::sb::Client;
using metro::sb::Message;

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void send_all(Client& client, const std::string& queue, int n) {
  auto sender = client.create_sender(queue);
  std::vector<Message> batch;
  Message m;
  m.body = R"({"subject":"MetroDemo/Type/GeekJokes","joke":")" + std::string(100, 'x') + "\"}";
  m.subject = "MetroDemo/Type/GeekJokes";
  for (int i = 0; i < n; ++i) {
    batch.push_back(m);
    if (batch.size() == 200 || i == n - 1) {
      sender.send(batch);
      batch.clear();
    }
  }
}

/// `threads` callers take from one receiver of `queue`: receive, defer, fetch by sequence number,
/// complete in batches, until `n` are done.
void defer_round_trip(Client& client, const std::string& queue, int n, int threads) {
  auto deferrer = client.create_receiver(queue, {metro::sb::ReceiveMode::kPeekLock, 500});
  std::atomic<int> finished{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      while (finished.load() < n) {
        auto got = deferrer.receive(100, 200ms);
        if (got.empty()) continue;
        std::vector<std::int64_t> numbers;
        for (auto& m : got) {
          deferrer.defer(m);
          numbers.push_back(m.sequence_number);
        }
        auto fetched = deferrer.receive_deferred(numbers);
        deferrer.complete_deferred(fetched);
        finished += static_cast<int>(fetched.size());
      }
    });
  }
  for (auto& w : workers) w.join();
}

double us_per(const bench::Usage& used, int n) { return used.cpu_s * 1e6 / n; }
double per(long count, int n) { return static_cast<double>(count) / n; }

}  // namespace

int main(int argc, char** argv) {
  if (int rc = bench::publisher_main(argc, argv); rc >= 0) return rc;
  if (argc < 2) {
    std::cerr << "usage: bench_sb_client <port> [N] [threads]\n";
    return 2;
  }
  int n = argc > 2 ? std::stoi(argv[2]) : 20000;
  int threads = argc > 3 ? std::stoi(argv[3]) : 8;
  Client client(bench::connection_string(argv[1]));

  if (argc > 5 && std::string(argv[4]) == "paced") {
    int rate = std::stoi(argv[5]);
    send_all(client, "bench-defer", 100);  // Warm up the links.
    defer_round_trip(client, "bench-defer", 100, threads);
    auto before = bench::Usage::self();
    auto start = std::chrono::steady_clock::now();
    auto publisher = bench::spawn_publisher(std::filesystem::canonical("/proc/self/exe").string(),
                                            argv[1], {"bench-defer"}, n, rate);
    defer_round_trip(client, "bench-defer", n, threads);
    double seconds = seconds_since(start);
    auto used = bench::Usage::self() - before;
    bench::wait_publisher(publisher);
    std::cout << "{\"messages\":" << n << ",\"threads\":" << threads << ",\"rate_per_s\":" << rate
              << ",\"achieved_per_s\":" << static_cast<long>(n / seconds)
              << ",\"cpp_receive_defer_fetch_complete_cpu_us_per_message\":" << us_per(used, n)
              << ",\"voluntary_switches_per_message\":" << per(used.voluntary, n)
              << ",\"involuntary_switches_per_message\":" << per(used.involuntary, n) << "}"
              << std::endl;
    client.close();
    return 0;
  }

  auto usage = bench::Usage::self();
  auto start = std::chrono::steady_clock::now();
  send_all(client, "bench", n);
  double send_s = seconds_since(start);
  auto send_used = bench::Usage::self() - usage;

  // Receive + complete: `threads` callers sharing one prefetching receiver.
  usage = bench::Usage::self();
  auto receiver = client.create_receiver("bench", {metro::sb::ReceiveMode::kPeekLock, 500});
  std::atomic<int> done{0};
  start = std::chrono::steady_clock::now();
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      while (done.load() < n) {
        for (auto& m : receiver.receive(16, 200ms)) {
          receiver.complete(m);
          ++done;
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  double complete_s = seconds_since(start);
  auto complete_used = bench::Usage::self() - usage;

  // The deferral round trip: receive, defer, fetch by sequence number, complete in batches.
  send_all(client, "bench-defer", n);
  usage = bench::Usage::self();
  start = std::chrono::steady_clock::now();
  defer_round_trip(client, "bench-defer", n, threads);
  double defer_s = seconds_since(start);
  auto defer_used = bench::Usage::self() - usage;

  rusage peak{};
  getrusage(RUSAGE_SELF, &peak);
  std::cout << "{\"messages\":" << n << ",\"threads\":" << threads
            << ",\"cpp_send_batched_per_s\":" << static_cast<long>(n / send_s)
            << ",\"cpp_send_batched_cpu_us_per_message\":" << us_per(send_used, n)
            << ",\"cpp_receive_complete_per_s\":" << static_cast<long>(n / complete_s)
            << ",\"cpp_receive_complete_cpu_us_per_message\":" << us_per(complete_used, n)
            << ",\"cpp_receive_defer_fetch_complete_per_s\":" << static_cast<long>(n / defer_s)
            << ",\"cpp_receive_defer_fetch_complete_cpu_us_per_message\":" << us_per(defer_used, n)
            << ",\"cpp_peak_rss_kib\":" << peak.ru_maxrss << "}" << std::endl;
  client.close();
  return 0;
}
