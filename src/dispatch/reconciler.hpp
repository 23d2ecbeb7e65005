#pragma once

// Reconciliation: taking up what the ledger says is unfinished. At start-up, rows left in
// `deferring` are resolved by peeking the subscription; rows in `deferred`, `running` and
// `retrying` are resumed in pages, only as fast as there is room in flight; deferred messages no
// row knows anywhere are adopted as `orphaned`. Rows are claimed in the ledger before anything is
// done with them: only this instance's own, unowned ones, and (`take_lapsed`) those whose
// owner's lease lapsed, so instances sharing a ledger never take the same message. `resume` is also how the reaper and a retry by request run
// a message's remaining handlers. A resumed row is checked like a received message (its body is
// bounded before anything parses it), so a message that once crashed a handler cannot stop metro.
// Thread-safety: used from the service's thread (start-up), the reaper's and the API's threads.

#include <atomic>
#include <chrono>
#include <functional>
#include <optional>

#include <metro/ledger/ledger.hpp>

#include "in_flight.hpp"
#include "ledger_health.hpp"
#include "route.hpp"
#include "settler.hpp"
#include "task_runner.hpp"

namespace metro::dispatch {

class Reconciler {
 public:
  using StopFn = std::function<bool()>;

  Reconciler(const Routes& routes, ledger::Ledger& ledger, InFlight& in_flight, TaskRunner& runner,
             Settler& settler, LedgerHealth& health, std::size_t body_limit)
      : routes_(routes),
        ledger_(ledger),
        in_flight_(in_flight),
        runner_(runner),
        settler_(settler),
        health_(health),
        body_limit_(body_limit) {}

  /// Resolves the `deferring` rows of `route` (own ones updated before `before`, when given, and
  /// with `take_lapsed` those of instances whose lease lapsed) by peeking: deferred → resumed;
  /// still active → the row is dropped (it is delivered again); gone → completed with a note. A
  /// row that cannot be resolved now is left for the reaper. Returns how many were resolved.
  std::size_t resolve_deferring(Route& route, std::optional<ledger::Clock::time_point> before,
                                bool take_lapsed, const StopFn& stop);
  /// Resumes the `deferred`, `running` and `retrying` rows of every route (own ones updated
  /// before `before`, when given, and with `take_lapsed` those of instances whose lease lapsed),
  /// claiming only as many at a time as there is room in flight. Transient errors are tried
  /// again. Returns how many messages were dispatched.
  std::size_t resume_unfinished(std::optional<ledger::Clock::time_point> before, bool take_lapsed,
                                const StopFn& stop);
  /// Records deferred messages of `route` that no row knows as `orphaned`.
  void adopt_orphans(Route& route, const StopFn& stop);
  /// Runs the handlers of a row that have not succeeded (all of them again when they all did and
  /// `fresh_budget`). False when nothing was started (being handled already, no handler of the
  /// current config matches, …).
  bool resume(Route& route, const ledger::DeferredMessage& row, bool fresh_budget);

 private:
  /// Claims the current rows of `route` in `states` (see `resolve_deferring`), at most `room()`
  /// at a time, and calls `each` for every one, in sequence order.
  void for_each_claimed(Route& route, std::vector<ledger::State> states,
                        std::optional<ledger::Clock::time_point> before, bool take_lapsed,
                        const std::function<std::size_t()>& room, const StopFn& stop,
                        const std::function<void(const ledger::DeferredMessage&)>& each);

  const Routes& routes_;
  ledger::Ledger& ledger_;
  InFlight& in_flight_;
  TaskRunner& runner_;
  Settler& settler_;
  LedgerHealth& health_;
  const std::size_t body_limit_;
};

}  // namespace metro::dispatch
