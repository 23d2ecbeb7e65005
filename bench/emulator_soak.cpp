// Steady traffic through an emulator: a publisher sends at a fixed rate while receivers take
// each message (peek-lock) and complete it, so nothing is left at the end. Prints one line of
// progress every `interval` seconds, then a JSON summary. bench/emulator-soak runs it against an
// emulator process and samples that process's RSS alongside.
// Usage: bench_emulator_soak <port> [total=250000] [rate=2000] [interval=10] [queue=bench]

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

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: bench_emulator_soak <port> [total] [rate] [interval] [queue]\n";
    return 2;
  }
  const long total = argc > 2 ? std::stol(argv[2]) : 250000;
  const long rate = argc > 3 ? std::stol(argv[3]) : 2000;
  const int interval = argc > 4 ? std::stoi(argv[4]) : 10;
  const std::string queue = argc > 5 ? argv[5] : "bench";
  Client client("Endpoint=sb://localhost:" + std::string(argv[1]) +
                ";SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
                "UseDevelopmentEmulator=true");

  std::atomic<long> sent{0};
  std::atomic<long> completed{0};
  auto start = std::chrono::steady_clock::now();

  // Every 10 ms, the messages due by then, in one batch.
  std::thread publisher([&] {
    auto sender = client.create_sender(queue);
    Message m;
    m.body = R"({"subject":"MetroDemo/Type/GeekJokes","joke":")" + std::string(100, 'x') + "\"}";
    m.subject = "MetroDemo/Type/GeekJokes";
    std::vector<Message> batch;
    auto tick = start;
    while (sent.load() < total) {
      tick += 10ms;
      std::this_thread::sleep_until(tick);
      auto elapsed = std::chrono::duration<double>(tick - start).count();
      long due = std::min(total, static_cast<long>(elapsed * static_cast<double>(rate)));
      batch.assign(static_cast<std::size_t>(std::max(0L, due - sent.load())), m);
      if (batch.empty()) continue;
      sender.send(batch);
      sent += static_cast<long>(batch.size());
    }
  });

  auto receiver = client.create_receiver(queue, {metro::sb::ReceiveMode::kPeekLock, 100});
  std::vector<std::thread> workers;
  for (int t = 0; t < 2; ++t) {
    workers.emplace_back([&] {
      while (completed.load() < total) {
        for (auto& r : receiver.receive(16, 200ms)) {
          receiver.complete(r);
          ++completed;
        }
      }
    });
  }

  auto next_report = start + std::chrono::seconds(interval);
  while (completed.load() < total) {
    std::this_thread::sleep_for(100ms);
    if (std::chrono::steady_clock::now() >= next_report) {
      next_report += std::chrono::seconds(interval);
      std::cout << "progress sent=" << sent.load() << " completed=" << completed.load()
                << std::endl;
    }
  }
  publisher.join();
  for (auto& w : workers) w.join();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "{\"messages\":" << total << ",\"rate\":" << rate << ",\"seconds\":" << seconds
            << "}" << std::endl;
  client.close();
  return 0;
}
