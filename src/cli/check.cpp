#include <iostream>

#include <metro/config/config.hpp>
#include <metro/sb/connection_string.hpp>

#include "../celery/redis_url.hpp"
#include "commands.hpp"

namespace metro::cli {
namespace {

std::string describe_run(const config::HandlerOptions& h) {
  switch (h.kind) {
    case config::HandlerKind::kFunction:
      return "handler " + h.function;
    case config::HandlerKind::kExec: {
      std::string out = "exec";
      for (const auto& arg : h.exec) out += " " + arg;
      return out;
    }
    case config::HandlerKind::kHttp:
      return "http " + h.http;
    case config::HandlerKind::kPython:
      return "python " + h.python + " (Celery queue " + h.queue + ")";
    case config::HandlerKind::kCelery:
      return "celery " + h.celery + " (Celery queue " + h.queue + ")";
  }
  return {};
}

}  // namespace

int run_check(const std::string& config_path) {
  config::Config cfg;
  try {
    cfg = config::load_config(config_path);
  } catch (const config::ConfigError& e) {
    for (const auto& d : e.diagnostics()) {
      std::cerr << sb::redact_connection_string(d.to_string()) << '\n';
    }
    auto n = e.diagnostics().size();
    std::cerr << config_path << ": " << n << (n == 1 ? " error" : " errors") << '\n';
    return kExitUsage;
  }

  std::size_t handlers = 0;
  for (const auto& s : cfg.subscriptions) handlers += s.handlers.size();
  std::cout << cfg.path << ": OK, " << cfg.subscriptions.size()
            << (cfg.subscriptions.size() == 1 ? " subscription, " : " subscriptions, ") << handlers
            << (handlers == 1 ? " handler" : " handlers") << '\n';
  std::cout << "  workers " << cfg.metro.workers << ", ledger " << cfg.metro.ledger
            << ", subject from " << routing::to_string(cfg.metro.subject_source) << '\n';
  for (const auto& s : cfg.subscriptions) {
    std::cout << "  " << s.topic_name << "/" << s.subscription_name << "  (" << s.handlers.size()
              << (s.handlers.size() == 1 ? " handler)" : " handlers)") << '\n';
    std::cout << "    connection " << sb::redact_connection_string(s.connection_string) << '\n';
    std::cout << "    no match: " << config::to_string(s.on_no_match)
              << ", malformed body: " << config::to_string(s.on_malformed_body) << '\n';
    for (const auto& h : s.handlers) {
      std::cout << "    - " << h.name << ": subject " << h.subject << " ("
                << routing::to_string(h.match) << ") -> " << describe_run(h) << ", completion "
                << config::to_string(h.completion) << ", " << h.retry.max_attempts
                << " attempts, then " << config::to_string(h.on_failure) << '\n';
    }
  }
  if (cfg.celery.configured) {
    std::cout << "  celery broker " << celery::redact_url_passwords(cfg.celery.broker)
              << ", results " << celery::redact_url_passwords(cfg.celery.result_backend)
              << ", queue " << cfg.celery.queue << '\n';
  }
  if (cfg.admin.enabled) {
    std::cout << "  admin API on " << cfg.admin.listen << " with " << cfg.admin.tokens.size()
              << (cfg.admin.tokens.size() == 1 ? " token" : " tokens") << '\n';
  }
  return kExitOk;
}

}  // namespace metro::cli
