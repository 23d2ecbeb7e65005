// `metro import-django settings.json`: the original's METRO settings (dumped as JSON) become a
// metro config on stdout. What it accepts (README "Migrating from Metro for Django"):
//
//   {"METRO": {"subscriptions": [{"topic_name": "…", "subscription_name": "…",
//                                 "connection_string": "…" | {"env": "NAME"} | null,
//                                 "handlers": [{"subject": "…", "regex": false,
//                                               "handler_function": "pkg.mod.func"
//                                                 | {"path": "pkg.mod.func",
//                                                    "celery_task": "registered.name"}}]}],
//              "worker_type": "celery"},
//    "CELERY_BROKER_URL": …, "CELERY_RESULT_BACKEND": …, "CELERY_TASK_DEFAULT_QUEUE": …}
//
// ("METROID" for the renamed package; or the METRO dict alone at the top.) A string value that
// equals an environment variable's value is written as ${NAME}; Python's re.match (anchored at
// the start only) becomes a whole-subject RE2 match.

#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "../celery/redis_url.hpp"
#include "../common/json_bounds.hpp"
#include "commands.hpp"

extern char** environ;

namespace metro::cli {
namespace {

using Json = nlohmann::ordered_json;

constexpr std::size_t kMaxSettingsBytes = 16u * 1024 * 1024;

class SettingsError : public std::runtime_error {
 public:
  SettingsError(const std::string& path, const std::string& what)
      : std::runtime_error(path + ": " + what) {}
};

/// A TOML string for a value metro reads literally: a `$` before `{` or `$` doubled (metro
/// interpolates `${…}` and reads `$$` as `$`), a literal string ('…') when that needs no escapes,
/// else a basic string.
std::string toml_literal(std::string_view text) {
  std::string value;
  for (std::size_t i = 0; i < text.size(); ++i) {
    value += text[i];
    if (text[i] == '$' && i + 1 < text.size() && (text[i + 1] == '{' || text[i + 1] == '$')) {
      value += '$';
    }
  }
  bool plain = value.find('\'') == std::string::npos;
  for (unsigned char c : value) plain = plain && c >= 0x20 && c != 0x7f;
  bool needs_escape = value.find('\\') != std::string::npos || value.find('"') != std::string::npos;
  if (plain && needs_escape) return "'" + value + "'";
  std::string out = "\"";
  constexpr std::string_view kHex = "0123456789ABCDEF";
  for (unsigned char c : value) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xF];
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string env_reference(const std::string& name) { return "\"${" + name + "}\""; }

/// The environment variable holding exactly `value` (the first by name), if any.
std::optional<std::string> variable_holding(const std::string& value) {
  if (value.size() < 8) return std::nullopt;  // Too short to be a connection string or URL.
  std::optional<std::string> found;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view entry(*e);
    auto eq = entry.find('=');
    if (eq == std::string_view::npos || entry.substr(eq + 1) != value) continue;
    std::string name(entry.substr(0, eq));
    if (!found || name < *found) found = name;
  }
  return found;
}

/// A Python `re.match` pattern (anchored at the start only) as an RE2 pattern matched against
/// the whole subject: unchanged when it already ends in an unescaped `$` and has no top-level
/// `|`, else followed by `.*`; `\Z` becomes RE2's `\z`.
std::string whole_match(const std::string& pattern) {
  std::string out;
  bool top_level_or = false;
  int depth = 0;
  bool in_class = false;
  bool ends_anchored = false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    ends_anchored = false;
    if (c == '\\' && i + 1 < pattern.size()) {
      char next = pattern[++i];
      out += '\\';
      out += next == 'Z' ? 'z' : next;
      ends_anchored = next == 'Z';
      continue;
    }
    out += c;
    if (in_class) {
      if (c == ']') in_class = false;
      continue;
    }
    if (c == '[') {
      in_class = true;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
    } else if (c == '(') {
      ++depth;
    } else if (c == ')') {
      if (depth > 0) --depth;
    } else if (c == '|' && depth == 0) {
      top_level_or = true;
    } else if (c == '$') {
      ends_anchored = true;
    }
  }
  if (ends_anchored && !top_level_or) return out;
  return top_level_or ? "(?:" + out + ").*" : out + ".*";
}

class Importer {
 public:
  explicit Importer(std::string file) : file_(std::move(file)) {}

  std::string convert(const Json& root) {
    if (!root.is_object()) throw SettingsError(file_, "expected a JSON object (the settings)");
    const Json* metro = &root;
    std::string base;
    for (const auto* key : {"METRO", "METROID"}) {
      if (root.contains(key)) {
        metro = &root.at(key);
        base = key;
        break;
      }
    }
    if (!metro->is_object()) throw SettingsError(file_ + ": " + base, "expected the settings dict");
    if (metro->contains("worker_type") && metro->at("worker_type") != "celery") {
      throw SettingsError(at(base, "worker_type"), "metro sends Celery tasks only; " +
                                                       metro->at("worker_type").dump() +
                                                       " workers have no counterpart");
    }
    static const Json kNone;
    const auto& subscriptions =
        metro->contains("subscriptions") ? metro->at("subscriptions") : kNone;
    if (!subscriptions.is_array() || subscriptions.empty()) {
      throw SettingsError(at(base, "subscriptions"), "expected a list of subscriptions");
    }

    std::ostringstream out;
    out << "# metro.toml converted by `metro import-django` from the original's " +
               (base.empty() ? std::string("METRO") : base) + " settings.\n"
        << "# Check it with `metro check --config metro.toml`.\n\n"
        << "[metro]\nledger = \"sqlite://${METRO_LEDGER_PATH:-metro-ledger.db}\"\n\n";
    write_celery(root, out);
    for (std::size_t i = 0; i < subscriptions.size(); ++i) {
      write_subscription(subscriptions[i], at(base, "subscriptions[" + std::to_string(i) + "]"),
                         out);
    }
    out << "[admin]\n"
        << "listen = \"${METRO_ADMIN_LISTEN:-127.0.0.1:8080}\"\n"
        << "# Handlers that call complete_deferred_message (python/metro) reach this API with\n"
        << "# METRO_URL and METRO_TOKEN set to this token on the workers.\n"
        << "tokens = [{ token = \"${METRO_ADMIN_TOKEN}\", role = \"admin\", name = \"workers\" "
           "}]\n";
    return out.str();
  }

  const std::vector<std::string>& notes() const { return notes_; }

 private:
  std::string at(const std::string& base, const std::string& key) const {
    return file_ + ": " + (base.empty() ? key : base + "." + key);
  }

  /// A string setting that may come from the environment: `{"env": "NAME"}`, or a string that
  /// equals a variable's value. Nullopt when absent or null.
  std::optional<std::string> value_from(const Json& value, const std::string& where, bool secret) {
    if (value.is_null()) return std::nullopt;
    if (value.is_object() && value.contains("env") && value.at("env").is_string()) {
      return env_reference(value.at("env").get<std::string>());
    }
    if (!value.is_string()) throw SettingsError(where, "expected a string or {\"env\": \"NAME\"}");
    auto text = value.get<std::string>();
    if (auto name = variable_holding(text)) return env_reference(*name);
    if (secret) {
      notes_.push_back(where +
                       ": written as it is (no environment variable holds it); it is a "
                       "secret: consider ${VARIABLE} instead");
    }
    return toml_literal(text);
  }

  void write_celery(const Json& root, std::ostringstream& out) {
    out << "# The team's Celery workers: their broker and result backend (both Redis).\n"
        << "[celery]\n";
    auto broker = root.contains("CELERY_BROKER_URL")
                      ? value_from(root.at("CELERY_BROKER_URL"), at("", "CELERY_BROKER_URL"), true)
                      : std::nullopt;
    if (!broker) {
      notes_.push_back(file_ +
                       ": no CELERY_BROKER_URL: the broker is read from ${CELERY_BROKER_URL}");
      broker = env_reference("CELERY_BROKER_URL");
    }
    out << "broker = " << *broker << "\n";
    if (root.contains("CELERY_RESULT_BACKEND")) {
      const auto& backend = root.at("CELERY_RESULT_BACKEND");
      if (backend.is_string()) {
        auto text = backend.get<std::string>();
        auto lowered = text.substr(0, 9);
        for (auto& c : lowered) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if (lowered.rfind("redis://", 0) != 0 && lowered.rfind("rediss://", 0) != 0) {
          notes_.push_back(at("", "CELERY_RESULT_BACKEND") + ": \"" +
                           celery::redact_url_passwords(text) +
                           "\" is not Redis; metro reads outcomes from a Redis result backend, so "
                           "the workers need one (result_backend below)");
        }
      }
      if (auto value = value_from(backend, at("", "CELERY_RESULT_BACKEND"), true)) {
        out << "result_backend = " << *value << "\n";
      }
    }
    if (root.contains("CELERY_TASK_DEFAULT_QUEUE") &&
        root.at("CELERY_TASK_DEFAULT_QUEUE").is_string()) {
      out << "queue = " << toml_literal(root.at("CELERY_TASK_DEFAULT_QUEUE").get<std::string>())
          << "\n";
    }
    out << "\n";
  }

  void write_subscription(const Json& s, const std::string& where, std::ostringstream& out) {
    if (!s.is_object()) throw SettingsError(where, "expected a subscription dict");
    auto text = [&](const char* key) {
      if (!s.contains(key) || !s.at(key).is_string() || s.at(key).get<std::string>().empty()) {
        throw SettingsError(where + "." + key, "expected a non-empty string");
      }
      return s.at(key).get<std::string>();
    };
    auto topic = text("topic_name");
    auto subscription = text("subscription_name");
    out << "[[subscriptions]]\n"
        << "topic_name = " << toml_literal(topic) << "\n"
        << "subscription_name = " << toml_literal(subscription) << "\n";
    std::optional<std::string> connection;
    if (s.contains("connection_string")) {
      connection = value_from(s.at("connection_string"), where + ".connection_string", true);
    }
    if (!connection) {
      std::string name = "CONNECTION_STRING_";
      for (char c : topic) {
        name += std::isalnum(static_cast<unsigned char>(c)) != 0
                    ? static_cast<char>(std::toupper(static_cast<unsigned char>(c)))
                    : '_';
      }
      notes_.push_back(where + ".connection_string: none in the settings; read from ${" + name +
                       "}");
      connection = env_reference(name);
    }
    out << "connection_string = " << *connection << "\n";
    if (!s.contains("handlers") || !s.at("handlers").is_array() || s.at("handlers").empty()) {
      throw SettingsError(where + ".handlers", "expected a list of handlers");
    }
    const auto& handlers = s.at("handlers");
    for (std::size_t i = 0; i < handlers.size(); ++i) {
      write_handler(handlers[i], where + ".handlers[" + std::to_string(i) + "]", out);
    }
    out << "\n";
  }

  void write_handler(const Json& h, const std::string& where, std::ostringstream& out) {
    if (!h.is_object()) throw SettingsError(where, "expected a handler dict");
    if (!h.contains("subject") || !h.at("subject").is_string()) {
      throw SettingsError(where + ".subject", "expected a string");
    }
    auto subject = h.at("subject").get<std::string>();
    bool regex = h.contains("regex") && h.at("regex").is_boolean() && h.at("regex").get<bool>();
    out << "\n  [[subscriptions.handlers]]\n";
    if (regex) {
      auto pattern = whole_match(subject);
      if (pattern != subject) {
        out << "  # Python's re.match(" << toml_literal(subject)
            << ") matches at the start; metro matches the whole subject\n";
      }
      out << "  subject = " << toml_literal(pattern) << "\n  regex = true\n";
    } else {
      out << "  subject = " << toml_literal(subject) << "\n";
    }
    if (!h.contains("handler_function")) {
      throw SettingsError(where + ".handler_function",
                          "missing (expected the function's dotted path)");
    }
    const auto& f = h.at("handler_function");
    if (f.is_string()) {
      out << "  python = " << toml_literal(f.get<std::string>()) << "\n";
    } else if (f.is_object() && f.contains("celery_task") && f.at("celery_task").is_string()) {
      out << "  celery = " << toml_literal(f.at("celery_task").get<std::string>()) << "\n";
    } else if (f.is_object() && f.contains("path") && f.at("path").is_string()) {
      out << "  python = " << toml_literal(f.at("path").get<std::string>()) << "\n";
    } else {
      throw SettingsError(where + ".handler_function",
                          "expected a dotted path such as \"demoproj.demoapp.services.my_func\" or "
                          "{\"celery_task\": \"registered.name\"}");
    }
  }

  std::string file_;
  std::vector<std::string> notes_;
};

}  // namespace

int run_import_django(const std::string& settings_path) {
  std::ifstream in(settings_path, std::ios::binary);
  if (!in) {
    std::cerr << "metro import-django: cannot read " << settings_path << '\n';
    return kExitUsage;
  }
  std::ostringstream text;
  text << in.rdbuf();
  auto body = text.str();
  if (auto problem = json_bounds::check(body, json_bounds::kMaxDepth, kMaxSettingsBytes)) {
    std::cerr << "metro import-django: " << settings_path << ": " << *problem << '\n';
    return kExitUsage;
  }
  Json root;
  try {
    root = Json::parse(body);
  } catch (const Json::exception& e) {
    std::cerr << "metro import-django: " << settings_path << " is not JSON: " << e.what() << '\n';
    return kExitUsage;
  }
  Importer importer(settings_path);
  try {
    auto toml = importer.convert(root);
    for (const auto& note : importer.notes()) {
      std::cerr << "metro import-django: note: " << celery::redact_url_passwords(note) << '\n';
    }
    std::cout << toml;
  } catch (const SettingsError& e) {
    std::cerr << "metro import-django: " << celery::redact_url_passwords(e.what()) << '\n';
    return kExitUsage;
  }
  return kExitOk;
}

}  // namespace metro::cli
