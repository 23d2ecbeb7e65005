#include <cstdlib>
#include <iostream>

#include <unistd.h>

#include <metro/config/config.hpp>
#include <metro/ledger/ledger.hpp>
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

/// Why an exec handler's command cannot run here (missing, not executable); empty when it can.
std::string exec_problem(const std::string& command) {
  if (command.find('/') != std::string::npos) {
    if (::access(command.c_str(), F_OK) != 0) return "no such file: " + command;
    if (::access(command.c_str(), X_OK) != 0) return command + " is not executable";
    return {};
  }
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "";
  for (std::size_t start = 0; start <= dirs.size();) {
    auto end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    auto dir = dirs.substr(start, end - start);
    auto candidate = (dir.empty() ? std::string(".") : dir) + "/" + command;
    if (::access(candidate.c_str(), X_OK) == 0) return {};
    start = end + 1;
  }
  return "'" + command + "' is not an executable in PATH";
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

  // Exec handlers must be there to run (relative commands are beside the config file).
  std::size_t missing = 0;
  for (std::size_t i = 0; i < cfg.subscriptions.size(); ++i) {
    const auto& s = cfg.subscriptions[i];
    for (std::size_t j = 0; j < s.handlers.size(); ++j) {
      const auto& h = s.handlers[j];
      if (h.kind != config::HandlerKind::kExec || h.exec.empty()) continue;
      if (auto problem = exec_problem(h.exec.front()); !problem.empty()) {
        config::Diagnostic d{cfg.path, h.line, 0,
                             "subscriptions[" + std::to_string(i) + "].handlers[" +
                                 std::to_string(j) + "].exec",
                             "the handler cannot run: " + problem};
        std::cerr << d.to_string() << '\n';
        ++missing;
      }
    }
  }
  if (missing > 0) {
    std::cerr << config_path << ": " << missing << (missing == 1 ? " error" : " errors") << '\n';
    return kExitUsage;
  }

  std::size_t handlers = 0;
  for (const auto& s : cfg.subscriptions) handlers += s.handlers.size();
  std::cout << cfg.path << ": OK, " << cfg.subscriptions.size()
            << (cfg.subscriptions.size() == 1 ? " subscription, " : " subscriptions, ") << handlers
            << (handlers == 1 ? " handler" : " handlers") << '\n';
  std::cout << "  workers " << cfg.metro.workers << ", ledger "
            << ledger::redact_ledger_url(cfg.metro.ledger)
            << ", subject from " << routing::to_string(cfg.metro.subject_source) << '\n';
  for (const auto& s : cfg.subscriptions) {
    std::cout << "  " << s.topic_name << "/" << s.subscription_name << "  (" << s.handlers.size()
              << (s.handlers.size() == 1 ? " handler)" : " handlers)") << '\n';
    std::cout << "    connection " << sb::redact_connection_string(s.connection_string) << '\n';
    // Each subscription's own settings, as they apply after its overrides of [metro].
    std::cout << "    subject from " << routing::to_string(s.subject_source)
              << ", no match: " << config::to_string(s.on_no_match)
              << ", malformed body: " << config::to_string(s.on_malformed_body) << ", prefetch "
              << (s.prefetch == 0 ? std::string("0 (as room allows, up to 100)")
                                  : std::to_string(s.prefetch))
              << ", defer " << config::to_string(s.defer);
    if (s.defer == config::DeferMode::kWhenSlow) {
      std::cout << " (after "
                << (s.defer_after ? std::to_string(s.defer_after->count()) + " ms"
                                  : std::string("a quarter of the lock duration"))
                << ")";
    }
    std::cout << '\n';
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
