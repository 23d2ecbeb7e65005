#pragma once

/// The HTTP side of a running metro: the JSON API under `/api/v1` (deferred messages: list, show,
/// retry, complete, dead-letter; subscriptions; publish), `/healthz`, `/readyz`, Prometheus
/// `/metrics` and the dashboard at `/`. Bearer tokens with roles `viewer` (read) and `admin`
/// (read and act); without tokens it serves loopback only and refuses every action.
///
/// Thread-safety: requests are served on the server's own threads; `start` and `stop` from one.

#include <cstdint>
#include <memory>
#include <string>

#include <metro/config/config.hpp>
#include <metro/dispatch/service.hpp>

namespace metro::admin {

class Server {
 public:
  Server(dispatch::Service& service, config::AdminOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  /// Binds `options.listen` (`host:port`; port 0 picks one) and serves in the background.
  /// Throws `metro::Error` when the address cannot be bound.
  void start();
  /// Stops serving. Idempotent.
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
