#include "reaper.hpp"

#include <spdlog/spdlog.h>

#include "naming.hpp"

namespace metro::dispatch {

namespace {
constexpr std::chrono::minutes kDeferringAge{1};  // Older `deferring` rows are resolved.
}

void Reaper::start() {
  thread_ = std::jthread([this](std::stop_token stop) { loop(stop); });
}

void Reaper::stop() {
  if (!thread_.joinable()) return;
  thread_.request_stop();
  { MutexLock lock(mutex_); }
  wake_.notify_all();
  thread_.join();
}

void Reaper::loop(const std::stop_token& stop) {
  auto stopped = [&] { return stop.stop_requested(); };
  // What the last run left unfinished, then the orphans (both once per start).
  reconciler_.resume_unfinished(std::nullopt, true, stopped);
  for (const auto& route : routes_) {
    try {
      reconciler_.adopt_orphans(*route, stopped);
    } catch (const Error& e) {
      spdlog::error("{}: orphan scan: {}", route->options.entity_path(), log_value(e.what()));
    }
  }
  auto deadline = options_.deferred_deadline;
  spdlog::debug("the reaper looks for stale deferrals every {} ms", interval_.count());
  while (!stopped()) {
    {
      MutexLock lock(mutex_);
      wake_.wait_for(lock, stop, interval_, [] { return false; });
    }
    if (stopped()) break;
    auto now = std::chrono::system_clock::now();
    // Instances sharing the ledger: one at a time sweeps for what others left (leases that
    // lapsed) and prunes; each looks after its own stale rows in any case.
    std::unique_ptr<ledger::Exclusive> sweeping;
    try {
      sweeping = ledger_.try_exclusive("reaper");
    } catch (const Error& e) {
      spdlog::warn("reaper: {}", log_value(e.what()));
    }
    // Just after the ledger came back, every lease may look lapsed (no instance could renew it):
    // give the others a lease's time to renew before their messages are taken.
    bool take_lapsed = sweeping && !health_.failed_within(lease_);
    for (const auto& route : routes_) {
      try {
        reconciler_.resolve_deferring(*route, now - kDeferringAge, take_lapsed, stopped);
      } catch (const Error& e) {
        spdlog::error("{}: reaper: {}", route->options.entity_path(), log_value(e.what()));
      }
    }
    reconciler_.resume_unfinished(now - deadline, take_lapsed, stopped);
    if (sweeping) prune();
  }
}

void Reaper::prune() {
  // Completed rows have a retention of their own (shorter by default: at high volume they are
  // nearly all of the ledger); dead-lettered and superseded ones keep `ledger_retention`.
  auto settled = options_.ledger_retention;
  auto completed = options_.completed_retention;
  if (settled.count() <= 0 && completed.count() <= 0) return;
  auto now = std::chrono::system_clock::now();
  auto cutoff = [now](std::chrono::milliseconds retention) {
    return retention.count() <= 0 ? ledger::Clock::time_point{} : now - retention;
  };
  try {
    if (auto n = ledger_.prune(cutoff(settled), cutoff(completed)); n > 0) {
      spdlog::info(
          "ledger: deleted {} settled message(s) older than completed_retention (completed) or "
          "ledger_retention (dead-lettered, superseded)",
          n);
    }
  } catch (const Error& e) {
    spdlog::error("ledger: pruning: {}", log_value(e.what()));
  }
}

}  // namespace metro::dispatch
