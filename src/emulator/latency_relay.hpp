#pragma once

// Cloud-like latency in front of the emulator: a TCP relay that listens on the emulator's public
// port, forwards what clients send at once, and hands each chunk the emulator sends back to its
// client `delay` after the emulator wrote it. Chunks are pipelined, not queued behind each other,
// so a connection sees a round trip of `delay` per exchange without losing throughput: the cost
// of a request/reply with a real namespace in the same region (1-5 ms) or farther away.
//
// Thread-safety: the relay runs one thread of its own; construction and destruction happen on
// the owner's thread.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace metro::emulator {

class LatencyRelay {
 public:
  /// Listens on `host`:`port` (0 picks a free one) and relays to `host`:`target_port`.
  /// Throws metro::Error when the port cannot be bound.
  LatencyRelay(const std::string& host, std::uint16_t port, std::uint16_t target_port,
               std::chrono::milliseconds delay);
  /// Closes every relayed connection and stops.
  ~LatencyRelay();
  LatencyRelay(const LatencyRelay&) = delete;
  LatencyRelay& operator=(const LatencyRelay&) = delete;

  std::uint16_t port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace metro::emulator
