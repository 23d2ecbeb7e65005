#pragma once

// A TCP proxy for fault injection. It listens on 127.0.0.1 (port 0), forwards every connection
// to a target, and on command cuts every connection, stalls (nothing moves either way, sockets
// stay open: a frozen network or a frozen peer), resumes, or slows (each chunk delayed).
//
// In-process (gtest):
//   metro::test::FaultProxy proxy("127.0.0.1", emulator.port());
//   connect to 127.0.0.1:proxy.port(); proxy.stall(); …; proxy.resume();
// As a process, for tests that drive real binaries: `metro_fault_proxy --target HOST:PORT`
// prints `listening 127.0.0.1:PORT` and takes one command a line on stdin (`cut`, `stall`,
// `resume`, `slow MS`, `status`), answering each with a line that starts with `ok`.
//
// Thread-safety: every member may be called from any thread; each command has taken effect when
// it returns. The proxy runs one thread of its own.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace metro::test {

class FaultProxy {
 public:
  /// Starts listening and forwarding to `target_host`:`target_port`. Throws std::runtime_error.
  FaultProxy(std::string target_host, std::uint16_t target_port);
  /// Closes every connection and stops.
  ~FaultProxy();
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  /// The port it listens on, on 127.0.0.1.
  std::uint16_t port() const;

  /// Closes every open connection now, both sides, with a reset (as a network failure would).
  /// New connections are accepted and forwarded as before.
  void cut();
  /// Stops forwarding both ways. Connections, new ones included, stay open; nothing is read,
  /// written or closed until `resume`.
  void stall();
  /// Forwards again at full speed: what waited goes through, in order.
  void resume();
  /// Forwards each chunk read `delay` later, both ways (a slow, high-latency link).
  void slow(std::chrono::milliseconds delay);

  /// Connections open now, and accepted since the start.
  std::size_t open_connections() const;
  std::size_t accepted() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace metro::test
