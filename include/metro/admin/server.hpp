#pragma once

/// The HTTP side of a running metro: the JSON API under `/api/v1` (deferred messages: list, show,
/// retry, complete, dead-letter; subscriptions; publish), `/healthz`, `/readyz`, Prometheus
/// `/metrics` and the dashboard at `/`. Bearer tokens with roles `viewer` (read) and `admin`
/// (read and act); without tokens it serves loopback only and refuses every action.
///
/// One I/O thread serves every connection without blocking; requests that read the ledger or
/// talk to Service Bus run on a few worker threads, readiness on a thread of its own, so that
/// neither slow clients nor slow requests keep `/healthz` and `/readyz` from answering. Every
/// wait has a deadline (`Limits`).
///
/// Thread-safety: requests are served on the server's own threads; `start` and `stop` from one.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include <metro/config/config.hpp>
#include <metro/dispatch/service.hpp>

namespace metro::admin {

/// What one client, one request and the server as a whole may take. The defaults are what
/// `metro run` uses (the README's "Limits" lists them).
struct Limits {
  /// Request line and headers together; more is 431 (414 when the request line alone is).
  std::size_t max_header_bytes = 16 * 1024;
  /// The request-target (path and query); more is 414.
  std::size_t max_target_bytes = 8 * 1024;
  /// A request body; more is 413, refused from its Content-Length before it is read or the
  /// token looked at.
  std::size_t max_body_bytes = 1024 * 1024;
  /// From the moment the server waits for a request (a new connection, or the previous
  /// response sent on a kept-alive one) until its whole head arrived; then it closes (408 when
  /// part of a head came).
  std::chrono::milliseconds header_timeout{10'000};
  /// Reading a body once its head arrived (408 after).
  std::chrono::milliseconds body_timeout{30'000};
  /// Sending a response.
  std::chrono::milliseconds write_timeout{30'000};
  /// Complete, dead-letter, retry and publish: when Service Bus has not confirmed by then the
  /// API answers 202 (the action goes on) instead of waiting.
  std::chrono::milliseconds action_deadline{15'000};
  /// Any request: 504 when it has no answer by then.
  std::chrono::milliseconds request_deadline{20'000};
  /// `/readyz`: 503 when its checks have not finished by then.
  std::chrono::milliseconds probe_deadline{5'000};
  /// Open connections in all; at the limit the one that has waited longest for a request head
  /// is closed to make room, and a new connection is refused (503) only when none is waiting.
  std::size_t max_connections = 256;
  /// The same, per client address.
  std::size_t max_connections_per_client = 32;
  /// Threads that run API requests (ledger reads, actions).
  std::size_t workers = 4;
  /// API requests running or waiting for a worker; more are answered 503 at once.
  std::size_t max_pending = 64;
};

class Server {
 public:
  Server(dispatch::Service& service, config::AdminOptions options, Limits limits = {});
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  /// Binds `options.listen` (`host:port`; port 0 picks one) and serves in the background.
  /// Throws `metro::Error` when the address cannot be bound.
  void start();
  /// Stops serving: closes every connection and waits for the requests being handled (each
  /// bounded by Service Bus's own timeouts). Idempotent.
  void stop();
  /// The bound port (after `start`).
  std::uint16_t port() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

/// The Prometheus text exposition of a service's metrics.
std::string metrics_text(dispatch::Service& service);

}  // namespace metro::admin
