// bus.toml: the namespace the emulator hosts. Read with the same table reader as metro.toml, so
// a mistake is reported the same way (file, line, key path, what was expected).

#include <cstring>
#include <fstream>
#include <sstream>

#include <metro/emulator/emulator.hpp>

#include "../settings/table_reader.hpp"
#include "filter.hpp"

namespace metro::emulator {
namespace {

using settings::TableReader;

void read_entity_options(TableReader& r, EntityOptions& o) {
  if (auto d = r.duration("lock_duration")) o.lock_duration = *d;
  if (auto d = r.duration("default_ttl")) o.default_ttl = *d;
  if (auto d = r.duration("duplicate_detection_window")) o.duplicate_detection_window = *d;
  if (auto n = r.integer("max_delivery_count", 1, 2000))
    o.max_delivery_count = static_cast<int>(*n);
  if (auto b = r.boolean("dead_lettering_on_expiration")) o.dead_lettering_on_expiration = *b;
  if (auto b = r.boolean("requires_duplicate_detection")) o.requires_duplicate_detection = *b;
}

void read_correlation(TableReader& r, CorrelationFilter& f) {
  f.correlation_id = r.string("correlation_id");
  f.message_id = r.string("message_id");
  f.to = r.string("to");
  f.reply_to = r.string("reply_to");
  f.label = r.string("label");
  if (auto subject = r.string("subject"); subject && !f.label) f.label = subject;
  f.session_id = r.string("session_id");
  f.reply_to_session_id = r.string("reply_to_session_id");
  f.content_type = r.string("content_type");
  if (const auto* props = r.table("properties")) {
    for (const auto& [k, v] : *props) {
      Scalar s;
      if (const auto* str = v.as_string()) {
        s = str->get();
      } else if (const auto* i = v.as_integer()) {
        s = i->get();
      } else if (const auto* d = v.as_floating_point()) {
        s = d->get();
      } else if (const auto* b = v.as_boolean()) {
        s = b->get();
      } else {
        r.context().error(settings::line_of(v), r.key_path("properties." + std::string(k.str())),
                          "expected a string, number or boolean, got " + settings::type_name(v));
      }
      f.properties[std::string(k.str())] = s;
    }
  }
  r.finish();
}

void read_rule(TableReader& r, RuleOptions& rule) {
  if (auto name = r.string("name", true)) rule.name = *name;
  rule.sql = r.string("sql");
  if (const auto* c = r.table("correlation")) {
    TableReader cr(r.context(), *c, r.key_path("correlation"));
    CorrelationFilter f;
    read_correlation(cr, f);
    rule.correlation = std::move(f);
  }
  if (rule.sql && rule.correlation) {
    r.context().error(r.line(), r.path(), "a rule has either sql or correlation, not both");
  }
  if (rule.sql) {
    try {
      (void)sql_filter(*rule.sql);
    } catch (const InvalidArgument& e) {
      r.invalid("sql", e.what());
    }
  }
  r.finish();
}

BusConfig read_bus(settings::Context& ctx, const toml::table& root) {
  BusConfig bus;
  TableReader r(ctx, root, "");
  if (r.node("keys") != nullptr) bus.keys.clear();
  r.each_table("keys", [&](const toml::table& t, const std::string& path) {
    TableReader kr(ctx, t, path);
    auto name = kr.string("name", true);
    auto key = kr.string("key", true);
    if (name && key) bus.keys.push_back({*name, *key});
    kr.finish();
  });
  r.each_table("queues", [&](const toml::table& t, const std::string& path) {
    TableReader qr(ctx, t, path);
    QueueOptions q;
    if (auto name = qr.string("name", true)) q.name = *name;
    read_entity_options(qr, q.options);
    qr.finish();
    bus.queues.push_back(std::move(q));
  });
  r.each_table("topics", [&](const toml::table& t, const std::string& path) {
    TableReader tr(ctx, t, path);
    TopicOptions topic;
    if (auto name = tr.string("name", true)) topic.name = *name;
    if (auto b = tr.boolean("requires_duplicate_detection")) {
      topic.options.requires_duplicate_detection = *b;
    }
    if (auto d = tr.duration("duplicate_detection_window")) {
      topic.options.duplicate_detection_window = *d;
    }
    tr.each_table("subscriptions", [&](const toml::table& st, const std::string& sub_path) {
      TableReader sr(ctx, st, sub_path);
      SubscriptionOptions sub;
      if (auto name = sr.string("name", true)) sub.name = *name;
      if (auto d = sr.duration("lock_duration")) sub.options.lock_duration = *d;
      if (auto d = sr.duration("default_ttl")) sub.options.default_ttl = *d;
      if (auto n = sr.integer("max_delivery_count", 1, 2000)) {
        sub.options.max_delivery_count = static_cast<int>(*n);
      }
      if (auto b = sr.boolean("dead_lettering_on_expiration")) {
        sub.options.dead_lettering_on_expiration = *b;
      }
      sr.each_table("rules", [&](const toml::table& rt, const std::string& rule_path) {
        TableReader rr(ctx, rt, rule_path);
        RuleOptions rule;
        read_rule(rr, rule);
        sub.rules.push_back(std::move(rule));
      });
      sr.finish();
      topic.subscriptions.push_back(std::move(sub));
    });
    tr.finish();
    bus.topics.push_back(std::move(topic));
  });
  r.finish();
  return bus;
}

}  // namespace

BusConfig load_bus_config(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw ConfigError(
        {{path.string(), 0, 0, "", "cannot read the file: " + std::string(std::strerror(errno))}});
  }
  std::ostringstream text;
  text << in.rdbuf();
  settings::Context ctx(path.string());
  auto root = settings::parse_toml(text.str(), path.string());
  auto bus = read_bus(ctx, root);
  ctx.throw_if_any();
  return bus;
}

}  // namespace metro::emulator
