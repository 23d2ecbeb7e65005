#pragma once

// The reaper: one thread that, after start-up, resumes what the last run left unfinished (in
// pages, as room allows), scans each subscription once for orphaned deferrals, then every
// interval takes up its stale deferrals (past `deferred_deadline`) and resolves its old
// `deferring` rows. Among instances sharing a ledger, the one that holds the ledger's exclusive
// right for the sweep also takes over the messages of instances whose lease lapsed and deletes
// completed rows past `completed_retention`, dead-lettered and superseded ones past
// `ledger_retention`.
// Thread-safety: `start`/`stop` from the service's thread.

#include <chrono>
#include <thread>

#include <metro/config/config.hpp>
#include <metro/ledger/ledger.hpp>

#include "../common/thread_annotations.hpp"
#include "ledger_health.hpp"
#include "reconciler.hpp"
#include "route.hpp"

namespace metro::dispatch {

class Reaper {
 public:
  Reaper(const Routes& routes, Reconciler& reconciler, ledger::Ledger& ledger,
         LedgerHealth& health, const config::MetroOptions& options,
         std::chrono::milliseconds interval)
      : routes_(routes),
        reconciler_(reconciler),
        ledger_(ledger),
        health_(health),
        options_(options),
        interval_(interval),
        lease_(options.lease) {}
  ~Reaper() { stop(); }
  Reaper(const Reaper&) = delete;
  Reaper& operator=(const Reaper&) = delete;

  void start();
  /// Ends the thread (a page under way finishes first). Idempotent.
  void stop();

 private:
  void loop(const std::stop_token& stop);
  void prune();

  const Routes& routes_;
  Reconciler& reconciler_;
  ledger::Ledger& ledger_;
  LedgerHealth& health_;
  const config::MetroOptions& options_;
  const std::chrono::milliseconds interval_;
  const std::chrono::milliseconds lease_;
  Mutex mutex_;
  CondVar wake_;
  std::jthread thread_;
};

}  // namespace metro::dispatch
