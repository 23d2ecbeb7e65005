// bus.toml: the namespace the emulator hosts, and the one a metro config implies.

#include <algorithm>

#include <toml++/toml.h>

#include <metro/config/config.hpp>
#include <metro/emulator/emulator.hpp>

#include "filter.hpp"

namespace metro::emulator {
namespace {

using config::Diagnostic;

class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  void error(const toml::node& node, const std::string& key, const std::string& message) {
    diagnostics_.push_back({file_, static_cast<int>(node.source().begin.line), 0, key, message});
  }

  void check_keys(const toml::table& table, const std::string& path,
                  std::initializer_list<std::string_view> known) {
    for (const auto& [key, value] : table) {
      if (std::find(known.begin(), known.end(), key.str()) == known.end()) {
        std::string expected;
        for (auto k : known) expected += (expected.empty() ? "" : ", ") + std::string(k);
        error(value, path + "." + std::string(key.str()),
              "unknown key (expected one of: " + expected + ")");
      }
    }
  }

  std::optional<std::string> string(const toml::table& t, const std::string& path,
                                    std::string_view key, bool required) {
    const auto* n = t.get(key);
    if (n == nullptr) {
      if (required) error(t, path + "." + std::string(key), "missing (expected a string)");
      return std::nullopt;
    }
    if (const auto* s = n->as_string()) return s->get();
    error(*n, path + "." + std::string(key), "expected a string");
    return std::nullopt;
  }

  void entity_options(const toml::table& t, const std::string& path, EntityOptions& o) {
    auto duration = [&](std::string_view key) -> std::optional<milliseconds> {
      const auto* n = t.get(key);
      if (n == nullptr) return std::nullopt;
      if (const auto* i = n->as_integer(); i && i->get() >= 0)
        return std::chrono::seconds(i->get());
      if (const auto* s = n->as_string()) {
        if (auto d = config::parse_duration(s->get())) return d;
      }
      error(*n, path + "." + std::string(key), "expected a duration such as \"30s\" or \"5m\"");
      return std::nullopt;
    };
    if (auto d = duration("lock_duration")) o.lock_duration = *d;
    if (auto d = duration("default_ttl")) o.default_ttl = *d;
    if (auto d = duration("duplicate_detection_window")) o.duplicate_detection_window = *d;
    if (const auto* n = t.get("max_delivery_count")) {
      if (const auto* i = n->as_integer(); i && i->get() >= 1 && i->get() <= 2000) {
        o.max_delivery_count = static_cast<int>(i->get());
      } else {
        error(*n, path + ".max_delivery_count", "expected an integer from 1 to 2000");
      }
    }
    for (auto [key, field] :
         {std::pair{"dead_lettering_on_expiration", &o.dead_lettering_on_expiration},
          std::pair{"requires_duplicate_detection", &o.requires_duplicate_detection}}) {
      if (const auto* n = t.get(key)) {
        if (const auto* b = n->as_boolean()) {
          *field = b->get();
        } else {
          error(*n, path + "." + key, "expected true or false");
        }
      }
    }
  }

  template <typename F>
  void each_table(const toml::table& t, const std::string& path, std::string_view key, F&& f) {
    const auto* n = t.get(key);
    if (n == nullptr) return;
    const auto* a = n->as_array();
    if (a == nullptr) {
      error(*n, path + std::string(key), "expected an array of tables");
      return;
    }
    for (std::size_t i = 0; i < a->size(); ++i) {
      auto p = path + std::string(key) + "[" + std::to_string(i) + "]";
      if (const auto* table = (*a)[i].as_table()) {
        f(*table, p);
      } else {
        error((*a)[i], p, "expected a table");
      }
    }
  }

  std::vector<Diagnostic> diagnostics_;

 private:
  std::string file_;
};

}  // namespace

BusConfig load_bus_config(const std::filesystem::path& path) {
  Reader r(path.string());
  toml::table root;
  try {
    root = toml::parse_file(path.string());
  } catch (const toml::parse_error& e) {
    throw config::ConfigError({{path.string(), static_cast<int>(e.source().begin.line),
                                static_cast<int>(e.source().begin.column), "",
                                "TOML syntax error: " + std::string(e.description())}});
  }
  BusConfig bus;
  r.check_keys(root, "", {"keys", "queues", "topics"});
  if (root.contains("keys")) bus.keys.clear();
  r.each_table(root, "", "keys", [&](const toml::table& t, const std::string& p) {
    r.check_keys(t, p, {"name", "key"});
    auto name = r.string(t, p, "name", true);
    auto key = r.string(t, p, "key", true);
    if (name && key) bus.keys.push_back({*name, *key});
  });
  r.each_table(root, "", "queues", [&](const toml::table& t, const std::string& p) {
    QueueOptions q;
    r.check_keys(t, p,
                 {"name", "lock_duration", "max_delivery_count", "default_ttl",
                  "dead_lettering_on_expiration", "requires_duplicate_detection",
                  "duplicate_detection_window"});
    if (auto name = r.string(t, p, "name", true)) q.name = *name;
    r.entity_options(t, p, q.options);
    bus.queues.push_back(std::move(q));
  });
  r.each_table(root, "", "topics", [&](const toml::table& t, const std::string& p) {
    TopicOptions topic;
    r.check_keys(
        t, p,
        {"name", "requires_duplicate_detection", "duplicate_detection_window", "subscriptions"});
    if (auto name = r.string(t, p, "name", true)) topic.name = *name;
    r.entity_options(t, p, topic.options);
    r.each_table(t, p + ".", "subscriptions", [&](const toml::table& st, const std::string& sp) {
      SubscriptionOptions sub;
      r.check_keys(st, sp,
                   {"name", "lock_duration", "max_delivery_count", "default_ttl",
                    "dead_lettering_on_expiration", "rules"});
      if (auto name = r.string(st, sp, "name", true)) sub.name = *name;
      r.entity_options(st, sp, sub.options);
      r.each_table(st, sp + ".", "rules", [&](const toml::table& rt, const std::string& rp) {
        RuleOptions rule;
        r.check_keys(rt, rp, {"name", "sql", "correlation"});
        if (auto name = r.string(rt, rp, "name", true)) rule.name = *name;
        rule.sql = r.string(rt, rp, "sql", false);
        if (const auto* c = rt.get("correlation")) {
          const auto* ct = c->as_table();
          if (ct == nullptr) {
            r.error(*c, rp + ".correlation", "expected a table");
          } else {
            CorrelationFilter f;
            auto cp = rp + ".correlation";
            r.check_keys(*ct, cp,
                         {"correlation_id", "message_id", "to", "reply_to", "label", "subject",
                          "session_id", "reply_to_session_id", "content_type", "properties"});
            f.correlation_id = r.string(*ct, cp, "correlation_id", false);
            f.message_id = r.string(*ct, cp, "message_id", false);
            f.to = r.string(*ct, cp, "to", false);
            f.reply_to = r.string(*ct, cp, "reply_to", false);
            f.label = r.string(*ct, cp, "label", false);
            if (!f.label) f.label = r.string(*ct, cp, "subject", false);
            f.session_id = r.string(*ct, cp, "session_id", false);
            f.reply_to_session_id = r.string(*ct, cp, "reply_to_session_id", false);
            f.content_type = r.string(*ct, cp, "content_type", false);
            if (const auto* props = ct->get_as<toml::table>("properties")) {
              for (const auto& [k, v] : *props) {
                Scalar s;
                if (const auto* str = v.as_string())
                  s = str->get();
                else if (const auto* i = v.as_integer())
                  s = i->get();
                else if (const auto* d = v.as_floating_point())
                  s = d->get();
                else if (const auto* b = v.as_boolean())
                  s = b->get();
                else
                  r.error(v, cp + ".properties." + std::string(k.str()), "expected a simple value");
                f.properties[std::string(k.str())] = s;
              }
            }
            rule.correlation = std::move(f);
          }
        }
        if (rule.sql && rule.correlation) {
          r.error(rt, rp, "a rule has either sql or correlation, not both");
        }
        if (rule.sql) {
          try {
            (void)sql_filter(*rule.sql);
          } catch (const InvalidArgument& e) {
            r.error(*rt.get("sql"), rp + ".sql", e.what());
          }
        }
        sub.rules.push_back(std::move(rule));
      });
      topic.subscriptions.push_back(std::move(sub));
    });
    bus.topics.push_back(std::move(topic));
  });
  if (!r.diagnostics_.empty()) {
    std::stable_sort(r.diagnostics_.begin(), r.diagnostics_.end(),
                     [](const Diagnostic& a, const Diagnostic& b) { return a.line < b.line; });
    throw config::ConfigError(std::move(r.diagnostics_));
  }
  return bus;
}

BusConfig bus_config_for(const config::Config& config) {
  BusConfig bus;
  for (const auto& s : config.subscriptions) {
    auto it = std::find_if(bus.topics.begin(), bus.topics.end(),
                           [&](const TopicOptions& t) { return t.name == s.topic_name; });
    if (it == bus.topics.end()) {
      bus.topics.push_back({s.topic_name, {}, {}});
      it = std::prev(bus.topics.end());
    }
    SubscriptionOptions sub;
    sub.name = s.subscription_name;
    it->subscriptions.push_back(std::move(sub));
  }
  return bus;
}

}  // namespace metro::emulator
