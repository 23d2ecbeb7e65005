#pragma once

// The admin API without sockets: one HTTP request in, one response out. Routing, bearer-token
// auth with roles, the JSON shapes, the errors and the audit log live here; the server
// (server.cpp) only moves bytes, bounds them and keeps time. Tests and the fuzzer drive it
// directly.
//
// Thread-safety: every member may be called from any number of threads at once (the state it
// keeps is fixed at construction; the service is thread-safe).

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include <metro/admin/server.hpp>

#include "auth.hpp"

namespace metro::admin {

struct Request {
  std::string method;  ///< As sent (`GET`, `POST`, …); compared case-sensitively, as HTTP does.
  std::string target;  ///< The raw request-target: `/path?query`, percent-encoded.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;

  /// The first header of that name (case-insensitive), or "".
  std::string header(std::string_view name) const;
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  ///< Beyond Content-Type/-Length.
};

/// The documented error: `{"error": message, "status": status}`.
Response error_response(int status, const std::string& message);

/// Where the server runs a request: on its I/O thread (cheap, never blocks), on the one thread
/// that answers readiness, or on the worker threads (ledger and Service Bus calls).
enum class Lane { kInline, kProbe, kWorker };

class Api {
 public:
  Api(dispatch::Service& service, const config::AdminOptions& options, Limits limits);

  /// Checks what can be checked before the body is read: route, method, auth (first), path
  /// values. A response to send now (and then close, if a body was announced), or nullopt to go
  /// on reading. Never blocks.
  std::optional<Response> check_head(const Request& request) const;
  /// The answer to a whole request (runs `check_head` again first). Blocks on the ledger and
  /// Service Bus, each wait bounded by the limits.
  Response handle(const Request& request);
  /// Where `request` (which passed `check_head`) should run.
  Lane lane(const Request& request) const;
  /// The answer when `handle` did not finish within `Limits::request_deadline` (or the
  /// readiness check within `Limits::probe_deadline`).
  Response timed_out(const Request& request) const;

 private:
  struct Call;

  std::optional<Response> route(const Request& request, Call& call) const;
  Response run(const Request& request, const Call& call);
  Response readyz();
  Response list(const Call& call);
  Response show(const ledger::MessageKey& key);
  Response act(const Request& request, const Call& call);
  Response publish(const Request& request, const Call& call);
  nlohmann::json subscriptions();
  // Failure groups and bulk jobs.
  Response failures(const Call& call);
  Response bulk(const Request& request, const Call& call);
  Response jobs(const Call& call);
  Response job(const Call& call);
  Response cancel_job(const Call& call);
  /// A query's topic and subscription in the config's spelling.
  void canonical_names(ledger::Query& q) const;
  /// The instances sharing the ledger: id, host, pid, last heartbeat, in-flight count, live.
  nlohmann::json instances();
  void require_open(const ledger::MessageKey& key);
  /// The config's spelling of a topic (and subscription) named in any case; as given when the
  /// config has none.
  std::string canonical_topic(const std::string& topic) const;
  ledger::MessageKey canonical(ledger::MessageKey key) const;

  dispatch::Service& service_;
  Tokens tokens_;
  Limits limits_;
};

}  // namespace metro::admin
