// The settings-file loader: TOML in, option structs out, every problem reported at once.

#include <algorithm>
#include <cctype>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <toml++/toml.h>

#include <metro/config/config.hpp>

#include "../celery/redis_url.hpp"
#include "../settings/table_reader.hpp"
#include "handler_table.hpp"

namespace metro::config {

std::string_view to_string(NoMatchPolicy policy) {
  switch (policy) {
    case NoMatchPolicy::kComplete:
      return "complete";
    case NoMatchPolicy::kDeadLetter:
      return "dead-letter";
    case NoMatchPolicy::kAbandon:
      return "abandon";
  }
  return "complete";
}

std::string_view to_string(MalformedBodyPolicy policy) {
  return policy == MalformedBodyPolicy::kDeadLetter ? "dead-letter" : "complete";
}

std::string_view to_string(Completion completion) {
  return completion == Completion::kAuto ? "auto" : "explicit";
}

std::string_view to_string(FailurePolicy policy) {
  return policy == FailurePolicy::kPark ? "park" : "dead-letter";
}

std::string_view to_string(DeferMode mode) {
  return mode == DeferMode::kAlways ? "always" : "when-slow";
}

std::string_view to_string(HandlerKind kind) {
  switch (kind) {
    case HandlerKind::kFunction:
      return "handler";
    case HandlerKind::kExec:
      return "exec";
    case HandlerKind::kHttp:
      return "http";
    case HandlerKind::kPython:
      return "python";
    case HandlerKind::kCelery:
      return "celery";
  }
  return "handler";
}

std::string_view to_string(Role role) { return role == Role::kAdmin ? "admin" : "viewer"; }

namespace {

using settings::Context;
using settings::line_of;
using settings::TableReader;
using settings::type_name;

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

void read_no_match(TableReader& r, NoMatchPolicy& out) {
  read_choice(r, "on_no_match", {"complete", "dead-letter", "abandon"},
              {NoMatchPolicy::kComplete, NoMatchPolicy::kDeadLetter, NoMatchPolicy::kAbandon}, out);
}

void read_malformed(TableReader& r, MalformedBodyPolicy& out) {
  read_choice(r, "on_malformed_body", {"dead-letter", "complete"},
              {MalformedBodyPolicy::kDeadLetter, MalformedBodyPolicy::kComplete}, out);
}

void read_subject_source(TableReader& r, routing::SubjectSource& out) {
  read_choice(r, "subject_source", {"body", "property", "body-then-property"},
              {routing::SubjectSource::kBody, routing::SubjectSource::kProperty,
               routing::SubjectSource::kBodyThenProperty},
              out);
}

/// The longest `defer_after`: a held message's lock is renewed for five minutes after it
/// arrived, and it must be deferred well before that.
constexpr milliseconds kMaxDeferAfter{std::chrono::minutes(4)};

void read_defer(TableReader& r, DeferMode& mode, std::optional<milliseconds>& after) {
  read_choice(r, "defer", {"always", "when-slow"}, {DeferMode::kAlways, DeferMode::kWhenSlow},
              mode);
  if (auto v = r.duration("defer_after")) {
    if (*v >= milliseconds(1) && *v <= kMaxDeferAfter) {
      after = *v;
    } else {
      r.invalid("defer_after", "expected a duration from 1ms to 4m");
    }
  }
}

void read_metro(TableReader& r, MetroOptions& m) {
  if (auto v = r.integer("workers", 1, 4096)) m.workers = static_cast<int>(*v);
  if (auto v = r.string("ledger")) {
    if (v->rfind("sqlite://", 0) == 0 && v->size() > 9) {
      m.ledger = *v;
    } else if (v->rfind("postgresql://", 0) == 0 || v->rfind("postgres://", 0) == 0) {
      m.ledger = *v;
    } else {
      r.invalid("ledger", "expected \"sqlite://<file>\" or \"postgresql://…\", got \"" + *v + "\"");
    }
  }
  read_subject_source(r, m.subject_source);
  read_no_match(r, m.on_no_match);
  read_malformed(r, m.on_malformed_body);
  if (auto v = r.integer("prefetch", 0, 100000)) m.prefetch = static_cast<int>(*v);
  read_defer(r, m.defer, m.defer_after);
  if (auto v = r.duration("deferred_deadline")) m.deferred_deadline = *v;
  if (auto v = r.duration("shutdown_grace")) m.shutdown_grace = *v;
  if (auto v = r.duration("ledger_retention")) m.ledger_retention = *v;
  if (auto v = r.integer("ledger_body_limit", 0, 256LL * 1024 * 1024)) {
    m.ledger_body_limit = static_cast<std::size_t>(*v);
  }
  if (auto v = r.string("instance_id")) {
    // It names the instance in the ledger, logs and the API: printable, one line, not too long.
    bool printable = !v->empty() && v->size() <= 128 &&
                     std::all_of(v->begin(), v->end(), [](char c) {
                       auto u = static_cast<unsigned char>(c);
                       return u >= 0x21 && u != 0x7F;
                     });
    if (printable) {
      m.instance_id = *v;
    } else {
      r.invalid("instance_id",
                "expected 1 to 128 printable characters without spaces, got \"" + *v + "\"");
    }
  }
  if (auto v = r.duration("lease")) {
    if (*v >= std::chrono::seconds(1) && *v <= std::chrono::hours(1)) {
      m.lease = *v;
    } else {
      r.invalid("lease", "expected a duration from 1s to 1h");
    }
  }
  // ---- the ledger's size: completed_rows, completed_retention ----
  read_choice(r, "completed_rows", {"lean", "full"},
              {MetroOptions::CompletedRows::kLean, MetroOptions::CompletedRows::kFull},
              m.completed_rows);
  if (auto v = r.duration("completed_retention")) {
    m.completed_retention = *v;
  } else {
    auto day = std::chrono::milliseconds(std::chrono::hours(24));
    m.completed_retention =
        m.ledger_retention.count() == 0 ? m.ledger_retention : std::min(day, m.ledger_retention);
  }
  r.finish();
}

void read_subscription(TableReader& r, const MetroOptions& defaults, SubscriptionOptions& s) {
  s.line = r.line();
  s.subject_source = defaults.subject_source;
  s.on_no_match = defaults.on_no_match;
  s.on_malformed_body = defaults.on_malformed_body;
  s.prefetch = defaults.prefetch;
  s.defer = defaults.defer;
  s.defer_after = defaults.defer_after;
  auto topic = r.string("topic_name", true);
  auto subscription = r.string("subscription_name", true);
  auto connection = r.string("connection_string", true);
  if (topic) s.topic_name = *topic;
  if (subscription) s.subscription_name = *subscription;
  for (auto [key, value] :
       {std::pair{"topic_name", topic}, std::pair{"subscription_name", subscription}}) {
    if (value && value->empty()) {
      r.invalid(key, "expected a non-empty name");
    }
  }
  if (connection) {
    s.connection_string = *connection;
    try {
      s.connection = sb::parse_connection_string(*connection);
      if (!s.connection.entity_path.empty() && topic &&
          lower(s.connection.entity_path) != lower(*topic)) {
        r.invalid("connection_string", "its EntityPath '" + s.connection.entity_path +
                                           "' disagrees with topic_name '" + *topic +
                                           "' (remove EntityPath or make them equal)");
      }
    } catch (const InvalidArgument& e) {
      r.invalid("connection_string",
                std::string("not a valid Service Bus connection string: ") + e.what());
    }
  }
  read_subject_source(r, s.subject_source);
  read_no_match(r, s.on_no_match);
  read_malformed(r, s.on_malformed_body);
  if (auto v = r.integer("prefetch", 0, 100000)) s.prefetch = static_cast<int>(*v);
  read_defer(r, s.defer, s.defer_after);

  const auto* handlers = r.array("handlers", "an array of tables ([[subscriptions.handlers]])");
  if (handlers == nullptr && r.node("handlers") == nullptr) {
    r.missing("handlers", "at least one [[subscriptions.handlers]] table");
  } else if (handlers != nullptr) {
    if (handlers->empty()) {
      r.invalid("handlers", "expected at least one handler");
    }
    std::map<std::string, std::size_t> names;
    for (std::size_t i = 0; i < handlers->size(); ++i) {
      auto key = r.key_path("handlers[" + std::to_string(i) + "]");
      const auto* table = (*handlers)[i].as_table();
      if (table == nullptr) {
        r.context().error(line_of((*handlers)[i]), key,
                          "expected a table, got " + type_name((*handlers)[i]));
        continue;
      }
      TableReader hr(r.context(), *table, key);
      auto handler = read_handler(hr);
      if (!handler) {
        continue;
      }
      bool explicit_name = table->contains("name");
      if (auto [it, inserted] = names.emplace(handler->name, i); !inserted) {
        if (explicit_name) {
          hr.invalid("name", "handler name '" + handler->name + "' is already used by " +
                                 r.key_path("handlers[" + std::to_string(it->second) + "]"));
          continue;
        }
        handler->name += "#" + std::to_string(i);
      }
      s.handlers.push_back(std::move(*handler));
    }
  }
  r.finish();
}

void read_admin(TableReader& r, AdminOptions& a) {
  if (auto v = r.boolean("enabled")) a.enabled = *v;
  if (auto v = r.integer("bulk_rate", 1, 100000)) a.bulk_rate = static_cast<int>(*v);
  if (auto v = r.string("listen")) {
    auto colon = v->rfind(':');
    bool valid = colon != std::string::npos && colon > 0 && colon + 1 < v->size();
    if (valid) {
      auto port_text = v->substr(colon + 1);
      valid = port_text.size() <= 5 &&
              std::all_of(port_text.begin(), port_text.end(),
                          [](unsigned char c) { return std::isdigit(c) != 0; }) &&
              std::stoi(port_text) <= 65535;
    }
    if (valid) {
      a.listen = *v;
    } else {
      r.invalid("listen", "expected \"host:port\" such as \"127.0.0.1:8080\", got \"" + *v + "\"");
    }
  }
  if (const auto* tokens = r.array("tokens", "an array of { token = \"…\", role = \"…\" }")) {
    for (std::size_t i = 0; i < tokens->size(); ++i) {
      auto key = r.key_path("tokens[" + std::to_string(i) + "]");
      const auto* table = (*tokens)[i].as_table();
      if (table == nullptr) {
        r.context().error(line_of((*tokens)[i]), key,
                          "expected { token = \"…\", role = \"viewer\" | \"admin\" }, got " +
                              type_name((*tokens)[i]));
        continue;
      }
      TableReader tr(r.context(), *table, key);
      AdminToken token;
      token.name = "token-" + std::to_string(i);
      auto secret = tr.string("token", true);
      if (!tr.node("role")) tr.missing("role", "\"viewer\" or \"admin\"");
      std::optional<std::size_t> role = tr.choice("role", {"viewer", "admin"});
      if (auto name = tr.string("name")) token.name = *name;
      tr.finish();
      if (secret && secret->empty()) {
        tr.invalid("token", "expected a non-empty token");
        continue;
      }
      if (!secret || !role) {
        continue;
      }
      token.token = *secret;
      token.role = *role == 1 ? Role::kAdmin : Role::kViewer;
      a.tokens.push_back(std::move(token));
    }
  }
  auto host = a.listen.substr(0, a.listen.rfind(':'));
  bool loopback =
      host == "localhost" || host == "[::1]" || host == "::1" || host.rfind("127.", 0) == 0;
  if (a.enabled && !loopback && a.tokens.empty() && r.node("tokens") == nullptr) {
    r.invalid("listen",
              "without admin.tokens the API listens on loopback only (127.0.0.1, ::1 or "
              "localhost); add tokens to listen on \"" +
                  host + "\"");
  }
  r.finish();
}

/// A Redis URL of `[celery]`; every message shows it redacted.
bool read_redis_url(TableReader& r, std::string_view key, const std::string& value) {
  auto shown = celery::redact_url_passwords(value);
  auto scheme = lower(value.substr(0, 9));
  if (key == "result_backend" && scheme.rfind("redis://", 0) != 0 &&
      scheme.rfind("rediss://", 0) != 0) {
    r.invalid(key, "metro reads task outcomes from a Redis result backend, and \"" + shown +
                       "\" is not one (expected redis:// or rediss://; set the workers' "
                       "result_backend to Redis too)");
    return false;
  }
  try {
    celery::parse_redis_url(value);
  } catch (const InvalidArgument& e) {
    r.invalid(key, e.what());
    return false;
  }
  return true;
}

void read_celery(TableReader& r, CeleryOptions& c) {
  c.configured = true;
  if (auto broker = r.string("broker", true)) {
    if (read_redis_url(r, "broker", *broker)) c.broker = *broker;
  }
  if (auto backend = r.string("result_backend")) {
    if (read_redis_url(r, "result_backend", *backend)) c.result_backend = *backend;
  } else {
    c.result_backend = c.broker;
  }
  if (auto queue = r.string("queue")) {
    if (is_celery_name(*queue)) {
      c.queue = *queue;
    } else {
      r.invalid("queue", "expected a Celery queue name (no spaces), got \"" + *queue + "\"");
    }
  }
  if (auto timeout = r.duration("result_timeout")) {
    if (timeout->count() == 0) {
      r.invalid("result_timeout", "expected a timeout above zero");
    } else {
      c.result_timeout = *timeout;
    }
  }
  if (auto v = r.integer("max_in_flight", 1, 100000)) c.max_in_flight = static_cast<int>(*v);
  r.finish();
}

/// Fills the Celery handlers' queue and result timeout from `[celery]`, and reports Celery
/// handlers in a file without a `[celery]` section.
void resolve_celery_handlers(Context& ctx, Config& config) {
  for (std::size_t i = 0; i < config.subscriptions.size(); ++i) {
    auto& s = config.subscriptions[i];
    for (std::size_t j = 0; j < s.handlers.size(); ++j) {
      auto& h = s.handlers[j];
      if (h.kind != HandlerKind::kPython && h.kind != HandlerKind::kCelery) continue;
      if (!config.celery.configured) {
        auto kind = std::string(to_string(h.kind));
        ctx.error(
            h.line,
            "subscriptions[" + std::to_string(i) + "].handlers[" + std::to_string(j) + "]." + kind,
            "a " + kind +
                " handler sends Celery tasks: add a [celery] section with broker = "
                "\"redis://host:6379/0\"");
        continue;
      }
      if (h.queue.empty()) h.queue = config.celery.queue;
      h.result_timeout = config.celery.result_timeout.value_or(h.timeout);
    }
  }
}

Config read_root(Context& ctx, const toml::table& root, std::string_view file_name) {
  Config config;
  config.path = std::string(file_name);
  TableReader r(ctx, root, "");
  if (const auto* metro = r.table("metro")) {
    TableReader mr(ctx, *metro, "metro");
    read_metro(mr, config.metro);
  }
  const auto* subscriptions = r.array("subscriptions", "an array of tables ([[subscriptions]])");
  if (subscriptions == nullptr) {
    if (r.node("subscriptions") == nullptr) {
      ctx.error(0, "subscriptions", "missing (expected at least one [[subscriptions]] table)");
    }
  } else {
    std::map<std::string, std::size_t> seen;
    for (std::size_t i = 0; i < subscriptions->size(); ++i) {
      auto key = "subscriptions[" + std::to_string(i) + "]";
      const auto* table = (*subscriptions)[i].as_table();
      if (table == nullptr) {
        ctx.error(line_of((*subscriptions)[i]), key,
                  "expected a table, got " + type_name((*subscriptions)[i]));
        continue;
      }
      TableReader sr(ctx, *table, key);
      SubscriptionOptions s;
      read_subscription(sr, config.metro, s);
      if (!s.topic_name.empty() && !s.subscription_name.empty()) {
        auto id = lower(s.topic_name) + "\n" + lower(s.subscription_name);
        if (auto [it, inserted] = seen.emplace(id, i); !inserted) {
          ctx.error(sr.line(), key,
                    "duplicate subscription " + s.topic_name + "/" + s.subscription_name +
                        " (already defined by subscriptions[" + std::to_string(it->second) +
                        "] at line " +
                        std::to_string(config.subscriptions.size() > it->second
                                           ? config.subscriptions[it->second].line
                                           : 0) +
                        ")");
        }
      }
      config.subscriptions.push_back(std::move(s));
    }
    if (subscriptions->empty()) {
      ctx.error(line_of(*subscriptions), "subscriptions", "expected at least one subscription");
    }
  }
  if (const auto* admin = r.table("admin")) {
    TableReader ar(ctx, *admin, "admin");
    read_admin(ar, config.admin);
  }
  if (const auto* celery = r.table("celery")) {
    TableReader cr(ctx, *celery, "celery");
    read_celery(cr, config.celery);
  }
  resolve_celery_handlers(ctx, config);
  r.finish();
  return config;
}

}  // namespace

Config parse_config(std::string_view text, std::string_view file_name, const Environment& env) {
  Context ctx(std::string(file_name), &env);
  auto root = settings::parse_toml(text, file_name);
  Config config = read_root(ctx, root, file_name);
  ctx.throw_if_any();
  return config;
}

namespace {

/// A relative command with a `/` in it (`handlers/x.sh`, `./x.sh`) names a file beside the
/// config, wherever metro is started from; a bare name (`python3`) is looked up in PATH.
void resolve_exec_paths(Config& config, const std::filesystem::path& folder) {
  if (folder.empty()) return;
  for (auto& s : config.subscriptions) {
    for (auto& h : s.handlers) {
      if (h.kind != HandlerKind::kExec || h.exec.empty()) continue;
      std::filesystem::path command(h.exec.front());
      if (command.is_relative() && h.exec.front().find('/') != std::string::npos) {
        h.exec.front() = (folder / command).lexically_normal().string();
      }
    }
  }
}

}  // namespace

Config load_config(const std::filesystem::path& path, const Environment& env) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw ConfigError(
        {{path.string(), 0, 0, "", "cannot read the file: " + std::string(std::strerror(errno))}});
  }
  std::ostringstream text;
  text << in.rdbuf();
  auto config = parse_config(text.str(), path.string(), env);
  resolve_exec_paths(config, path.parent_path());
  return config;
}

}  // namespace metro::config
