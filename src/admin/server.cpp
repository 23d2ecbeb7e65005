// The admin HTTP server: routes, auth, JSON shapes, errors and the audit log.

#include <array>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <spdlog/spdlog.h>

#include <metro/admin/server.hpp>
#include <metro/sb/errors.hpp>

#include "dashboard.hpp"
#include "json.hpp"
#include "query.hpp"

namespace metro::admin {

using nlohmann::json;

namespace {

constexpr const char* kMessagePath = R"(/api/v1/deferred/([^/]+)/([^/]+)/(-?\d+))";

/// An error answer: `{"error": "...", "status": N}`.
void fail(httplib::Response& res, int status, const std::string& message) {
  res.status = status;
  res.set_content(json{{"error", message}, {"status", status}}.dump(), "application/json");
}

void reply(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

using Digest = std::array<unsigned char, SHA256_DIGEST_LENGTH>;

Digest digest(const std::string& text) {
  Digest d{};
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), d.data());
  return d;
}

/// Who is calling.
struct Caller {
  std::string name;
  config::Role role = config::Role::kViewer;
};

}  // namespace

struct Server::Impl {
  dispatch::Service& service;
  config::AdminOptions options;
  std::vector<std::pair<Digest, const config::AdminToken*>> tokens;
  httplib::Server http;
  std::thread thread;
  int port = 0;

  Impl(dispatch::Service& s, config::AdminOptions o) : service(s), options(std::move(o)) {
    for (const auto& t : options.tokens) tokens.emplace_back(digest(t.token), &t);
    routes();
  }

  // ---- auth --------------------------------------------------------------------------------

  /// The caller, or nullopt after answering 401. Tokens are compared as SHA-256 digests in
  /// constant time, every one of them, so neither timing nor length tells anything.
  std::optional<Caller> identify(const httplib::Request& req, httplib::Response& res) {
    if (tokens.empty()) return Caller{"local", config::Role::kViewer};
    auto header = req.get_header_value("Authorization");
    constexpr std::string_view kBearer = "Bearer ";
    const config::AdminToken* match = nullptr;
    if (header.size() > kBearer.size() && header.compare(0, kBearer.size(), kBearer) == 0) {
      auto presented = digest(header.substr(kBearer.size()));
      for (const auto& [d, token] : tokens) {
        if (CRYPTO_memcmp(d.data(), presented.data(), d.size()) == 0) match = token;
      }
    }
    if (match == nullptr) {
      res.set_header("WWW-Authenticate", "Bearer");
      fail(res, 401,
           header.empty() ? "this API needs a bearer token: Authorization: Bearer <token>"
                          : "the bearer token is not one of this metro's tokens");
      return std::nullopt;
    }
    return Caller{match->name.empty() ? std::string(to_string(match->role)) : match->name,
                  match->role};
  }

  /// For actions: the caller when an admin, else nullopt after answering 401/403 (audited).
  std::optional<Caller> admin(const httplib::Request& req, httplib::Response& res,
                              const std::string& action, const std::string& target) {
    auto caller = identify(req, res);
    if (!caller) {
      audit("-", action, target, "denied: no valid token");
      return std::nullopt;
    }
    if (tokens.empty()) {
      fail(res, 403,
           "actions need an admin token, and this metro has none: add { token = \"…\", role = "
           "\"admin\" } to [admin] tokens in its config");
      audit(caller->name, action, target, "denied: no tokens configured");
      return std::nullopt;
    }
    if (caller->role != config::Role::kAdmin) {
      fail(res, 403,
           "the token '" + caller->name + "' is a viewer's; " + action + " needs an admin token");
      audit(caller->name, action, target, "denied: viewer");
      return std::nullopt;
    }
    return caller;
  }

  static void audit(const std::string& who, const std::string& action, const std::string& target,
                    const std::string& outcome) {
    spdlog::info("audit: token={} action={} message={} outcome={}", who, action, target, outcome);
  }

  // ---- routes ------------------------------------------------------------------------------

  /// Runs `body`, turning metro's exceptions into the matching HTTP errors.
  template <class F>
  static void guarded(httplib::Response& res, F body) {
    try {
      body();
    } catch (const UnknownMessageError& e) {
      fail(res, 404, e.what());
    } catch (const ConflictError& e) {
      fail(res, 409, e.what());
    } catch (const InvalidArgument& e) {
      fail(res, 400, e.what());
    } catch (const sb::NotFoundError& e) {
      fail(res, 404, e.what());
    } catch (const sb::ServiceBusError& e) {
      fail(res, 502, std::string("Service Bus: ") + e.what());
    } catch (const std::exception& e) {
      fail(res, 500, e.what());
    }
  }

  static ledger::MessageKey key_of(const httplib::Request& req) {
    return {req.matches[1].str(), req.matches[2].str(), std::stoll(req.matches[3].str())};
  }

  static std::string name_of(const ledger::MessageKey& key) {
    return key.topic + "/" + key.subscription + "#" + std::to_string(key.sequence_number);
  }

  void routes() {
    http.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("ok\n", "text/plain");
    });
    http.Get("/readyz", [this](const httplib::Request&, httplib::Response& res) { readyz(res); });
    http.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
      if (!identify(req, res)) return;
      guarded(res, [&] {
        res.set_content(metrics_text(service), "text/plain; version=0.0.4; charset=utf-8");
      });
    });
    http.Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(std::string(kDashboardHtml), "text/html; charset=utf-8");
    });
    http.Get("/api/v1/whoami", [this](const httplib::Request& req, httplib::Response& res) {
      auto caller = identify(req, res);
      if (!caller) return;
      reply(res, 200,
            {{"name", caller->name},
             {"role", tokens.empty() ? "viewer" : std::string(to_string(caller->role))},
             {"actions", !tokens.empty() && caller->role == config::Role::kAdmin}});
    });
    http.Get("/api/v1/deferred", [this](const httplib::Request& req, httplib::Response& res) {
      if (!identify(req, res)) return;
      guarded(res, [&] { list(req, res); });
    });
    http.Get(kMessagePath, [this](const httplib::Request& req, httplib::Response& res) {
      if (!identify(req, res)) return;
      guarded(res, [&] { show(key_of(req), res); });
    });
    http.Post(std::string(kMessagePath) + "/retry",
              [this](const httplib::Request& req, httplib::Response& res) {
                act(req, res, "retry", [&](const ledger::MessageKey& key) {
                  service.retry(key);
                  return 202;
                });
              });
    http.Post(std::string(kMessagePath) + "/complete",
              [this](const httplib::Request& req, httplib::Response& res) {
                act(req, res, "complete", [&](const ledger::MessageKey& key) {
                  require_open(key);
                  service.complete(key).get();
                  return 200;
                });
              });
    http.Post(std::string(kMessagePath) + "/dead-letter", [this](const httplib::Request& req,
                                                                 httplib::Response& res) {
      act(req, res, "dead-letter", [&](const ledger::MessageKey& key) {
        require_open(key);
        auto body = req.body.empty() ? json::object() : json::parse(req.body, nullptr, false);
        if (!body.is_object()) {
          throw InvalidArgument(
              "expected a JSON object {\"reason\": \"…\", \"description\": \"…\"}");
        }
        auto reason = body.value("reason", std::string("DeadLetteredByOperator"));
        auto description = body.value("description", std::string());
        service.dead_letter(key, reason, description);
        return 200;
      });
    });
    http.Get("/api/v1/subscriptions", [this](const httplib::Request& req, httplib::Response& res) {
      if (!identify(req, res)) return;
      guarded(res, [&] { reply(res, 200, {{"items", subscriptions()}}); });
    });
    http.Post("/api/v1/publish",
              [this](const httplib::Request& req, httplib::Response& res) { publish(req, res); });
    http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (res.status == 404 && res.body.empty()) {
        fail(res, 404, "no route " + req.method + " " + req.path + " (see /api/v1 in the README)");
      }
    });
  }

  void readyz(httplib::Response& res) {
    auto readiness = service.readiness();
    if (readiness.ready) {
      reply(res, 200, {{"ready", true}, {"problems", json::array()}});
      return;
    }
    std::string why;
    for (const auto& p : readiness.problems) why += (why.empty() ? "" : "; ") + p;
    reply(res, 503,
          {{"error", "not ready: " + why},
           {"status", 503},
           {"ready", false},
           {"problems", readiness.problems}});
  }

  void list(const httplib::Request& req, httplib::Response& res) {
    auto q = parse_list_query(req.params, std::chrono::system_clock::now());
    auto page = service.ledger().list(q);
    json items = json::array();
    for (const auto& m : page.items) items.push_back(message_json(m, false));
    reply(res, 200,
          {{"items", items}, {"next", page.next ? json(encode_cursor(*page.next)) : json()}});
  }

  void show(const ledger::MessageKey& key, httplib::Response& res) {
    auto row = service.ledger().find(key);
    if (!row) throw UnknownMessageError("no deferred message " + name_of(key) + " is known");
    auto out = message_json(*row, true);
    json runs = json::array();
    for (const auto& r : service.ledger().runs(key)) runs.push_back(run_json(r));
    out["runs"] = runs;
    reply(res, 200, out);
  }

  void require_open(const ledger::MessageKey& key) {
    auto row = service.ledger().find(key);
    if (!row) throw UnknownMessageError("no deferred message " + name_of(key) + " is known");
    if (row->state == ledger::State::kCompleted || row->state == ledger::State::kDeadLettered) {
      throw ConflictError(name_of(key) + " is already " + std::string(to_string(row->state)));
    }
  }

  template <class F>
  void act(const httplib::Request& req, httplib::Response& res, const std::string& action, F f) {
    auto key = key_of(req);
    auto target = name_of(key);
    auto caller = admin(req, res, action, target);
    if (!caller) return;
    guarded(res, [&] {
      int status = f(key);
      audit(caller->name, action, target, "ok");
      show(key, res);
      res.status = status;
    });
    if (res.status >= 400) audit(caller->name, action, target, "error: " + res.body);
  }

  json subscriptions() {
    json items = json::array();
    auto now = std::chrono::system_clock::now();
    for (const auto& s : service.subscriptions()) {
      json counts = json::object();
      for (const auto& [state, n] : service.ledger().counts(s.topic, s.subscription)) {
        counts[std::string(to_string(state))] = n;
      }
      auto oldest = service.ledger().oldest_deferred(s.topic, s.subscription);
      json handlers = json::array();
      for (const auto& sub : service.config().subscriptions) {
        if (sub.topic_name != s.topic || sub.subscription_name != s.subscription) continue;
        for (const auto& h : sub.handlers) handlers.push_back(h.name);
      }
      items.push_back(
          {{"topic", s.topic},
           {"subscription", s.subscription},
           {"state", connection_state(s.state)},
           {"state_reason", s.state_reason},
           {"counts", counts},
           {"handlers", handlers},
           {"last_message", s.last_message.time_since_epoch().count() == 0
                                ? json()
                                : json(iso_time(s.last_message))},
           {"oldest_deferred_age_seconds",
            oldest ? json(std::chrono::duration<double>(now - *oldest).count()) : json()}});
    }
    return items;
  }

  void publish(const httplib::Request& req, httplib::Response& res) {
    auto body = json::parse(req.body, nullptr, false);
    auto topic = body.is_object() ? body.value("topic", std::string()) : std::string();
    auto caller = admin(req, res, "publish", topic.empty() ? "-" : topic);
    if (!caller) return;
    guarded(res, [&] {
      if (!body.is_object() || topic.empty() || !body.contains("body")) {
        throw InvalidArgument(
            "expected {\"topic\": \"…\", \"body\": <JSON or text>, \"subject\": \"…\" (optional), "
            "\"correlation_id\": \"…\" (optional)}");
      }
      sb::Message m;
      m.body = body["body"].is_string() ? body["body"].get<std::string>() : body["body"].dump();
      m.content_type = body["body"].is_string() ? "text/plain" : "application/json";
      if (body.contains("subject")) m.subject = body.value("subject", std::string());
      if (body.contains("correlation_id")) {
        m.correlation_id = body.value("correlation_id", std::string());
      }
      service.publish(topic, m);
      audit(caller->name, "publish", topic, "ok");
      reply(res, 202, {{"published", true}, {"topic", topic}});
    });
  }
};

Server::Server(dispatch::Service& service, config::AdminOptions options)
    : impl_(std::make_unique<Impl>(service, std::move(options))) {}

Server::~Server() { stop(); }

void Server::start() {
  const auto& listen = impl_->options.listen;
  auto colon = listen.rfind(':');
  auto host = listen.substr(0, colon);
  if (host.size() > 1 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int port = std::stoi(listen.substr(colon + 1));
  if (port == 0) {
    port = impl_->http.bind_to_any_port(host);
  } else if (!impl_->http.bind_to_port(host, port)) {
    port = -1;
  }
  if (port < 0) throw Error("the admin API cannot listen on " + listen);
  impl_->port = port;
  impl_->thread = std::thread([this] { impl_->http.listen_after_bind(); });
}

void Server::stop() {
  if (!impl_ || !impl_->thread.joinable()) return;
  impl_->http.stop();
  impl_->thread.join();
}

std::uint16_t Server::port() const { return static_cast<std::uint16_t>(impl_->port); }

}  // namespace metro::admin
