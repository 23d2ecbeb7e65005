// The C++ client against a running emulator: send (batched), receive + complete, and the
// deferral round trip metro makes (receive, defer, receive-by-sequence-number, complete in
// batches). Prints one JSON object. Usage: bench_sb_client <port> [N] [threads]

#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <metro/sb/client.hpp>

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

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: bench_sb_client <port> [N] [threads]\n";
    return 2;
  }
  int n = argc > 2 ? std::stoi(argv[2]) : 20000;
  int threads = argc > 3 ? std::stoi(argv[3]) : 8;
  auto cs = "Endpoint=sb://localhost:" + std::string(argv[1]) +
            ";SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
            "UseDevelopmentEmulator=true";
  Client client(cs);

  auto start = std::chrono::steady_clock::now();
  send_all(client, "bench", n);
  double send_s = seconds_since(start);

  // Receive + complete: `threads` callers sharing one prefetching receiver.
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

  // The deferral round trip: receive, defer, fetch by sequence number, complete in batches.
  send_all(client, "bench-defer", n);
  auto deferrer = client.create_receiver("bench-defer", {metro::sb::ReceiveMode::kPeekLock, 500});
  std::atomic<int> finished{0};
  start = std::chrono::steady_clock::now();
  workers.clear();
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
  double defer_s = seconds_since(start);

  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::cout << "{\"messages\":" << n << ",\"threads\":" << threads
            << ",\"cpp_send_batched_per_s\":" << static_cast<long>(n / send_s)
            << ",\"cpp_receive_complete_per_s\":" << static_cast<long>(n / complete_s)
            << ",\"cpp_receive_defer_fetch_complete_per_s\":" << static_cast<long>(n / defer_s)
            << ",\"cpp_peak_rss_kib\":" << usage.ru_maxrss << "}" << std::endl;
  client.close();
  return 0;
}
