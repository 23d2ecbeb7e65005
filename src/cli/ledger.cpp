// `metro ledger migrate` and `metro ledger copy`: the ledger's schema and moving a ledger (a
// single instance's SQLite file to a shared PostgreSQL database, or back).

#include <iostream>

#include <metro/config/config.hpp>
#include <metro/ledger/ledger.hpp>
#include <metro/sb/connection_string.hpp>

#include "commands.hpp"

namespace metro::cli {
namespace {

int migrate(const LedgerCommand& command) {
  config::Config cfg;
  try {
    cfg = config::load_config(command.config_path);
  } catch (const config::ConfigError& e) {
    for (const auto& d : e.diagnostics()) {
      std::cerr << ledger::redact_ledger_url(sb::redact_connection_string(d.to_string())) << '\n';
    }
    return kExitUsage;
  }
  const auto& url = cfg.metro.ledger;
  auto shown = ledger::redact_ledger_url(url);
  auto pending = ledger::pending_migrations(url);
  if (pending.empty()) {
    std::cout << shown << ": the schema is up to date\n";
    return kExitOk;
  }
  for (const auto& m : pending) {
    std::cout << shown << ": pending migration " << m.version << ": " << m.description << '\n';
  }
  if (command.dry_run) return kExitOk;
  // Opening applies them (each once, even with instances starting at the same moment).
  auto opened = ledger::open_ledger(url);
  int version = 0;
  for (const auto& m : opened->migrations()) {
    if (m.applied) version = m.version;
  }
  std::cout << shown << ": applied " << pending.size() << " migration(s); schema version "
            << version << '\n';
  return kExitOk;
}

int copy(const LedgerCommand& command) {
  std::string from, to;
  try {
    from = config::interpolate(command.from, config::process_environment());
    to = config::interpolate(command.to, config::process_environment());
  } catch (const InvalidArgument& e) {
    std::cerr << "metro ledger copy: " << e.what() << '\n';
    return kExitUsage;
  }
  if (from == to) {
    std::cerr << "metro ledger copy: --from and --to name the same ledger\n";
    return kExitUsage;
  }
  auto source = ledger::open_ledger(from);
  for (const auto& i : source->instances()) {
    if (i.live) {
      std::cerr << "metro ledger copy: metro instance '" << i.id << "' (pid " << i.pid << " on "
                << i.host << ") is running on " << ledger::redact_ledger_url(from)
                << "; stop it first, so that nothing changes while the ledger is copied\n";
      return kExitFailure;
    }
  }
  auto target = ledger::open_ledger(to);
  auto copied = ledger::copy_ledger(*source, *target, [](std::size_t n) {
    std::cerr << "\rcopied " << n << " message(s)" << std::flush;
  });
  std::cerr << '\n';
  auto counts = target->counts();
  std::cout << "copied " << copied << " message record(s) with their handler runs from "
            << ledger::redact_ledger_url(from) << " to " << ledger::redact_ledger_url(to) << '\n';
  for (const auto& [state, n] : counts) {
    std::cout << "  " << ledger::to_string(state) << ": " << n << '\n';
  }
  return kExitOk;
}

}  // namespace

int run_ledger(const LedgerCommand& command) {
  try {
    if (command.action == "migrate") return migrate(command);
    if (command.action == "copy") return copy(command);
  } catch (const Error& e) {
    std::cerr << "metro ledger " << command.action << ": " << ledger::redact_ledger_url(e.what())
              << '\n';
    return kExitFailure;
  }
  return kExitUsage;
}

}  // namespace metro::cli
