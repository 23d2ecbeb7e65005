#pragma once

// Intake: what happens to a received message before a handler runs. `classify` is pure: is the
// body acceptable JSON (within the depth and size bounds), what is its subject, which handlers
// match. `Intake` then settles what cannot be handled (by policy) and records the rest in the
// ledger before deferring it in Service Bus (a deferred message can only be fetched again by its
// sequence number, so the number is written down first), then dispatches its handlers.
// Thread-safety: `classify` is reentrant; an `Intake` is used by the listener threads at once.

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include <metro/config/config.hpp>
#include <metro/dispatch/handler.hpp>
#include <metro/ledger/ledger.hpp>
#include <metro/routing/router.hpp>
#include <metro/sb/client.hpp>

#include "counters.hpp"
#include "held.hpp"
#include "in_flight.hpp"
#include "ledger_health.hpp"
#include "route.hpp"
#include "task_runner.hpp"

namespace metro::dispatch {

/// Largest body metro accepts as JSON; a larger one is malformed (`on_malformed_body`).
inline constexpr std::size_t kMaxBodyBytes = 16 * 1024 * 1024;

/// What a received message is, for intake.
struct Classification {
  enum class Kind {
    kWork,         ///< Route it: `handlers` match.
    kMalformed,    ///< The body is not acceptable JSON: `reason` says why.
    kNoMatch,      ///< No subject, or no handler for it: `reason` says which.
    kLockExpired,  ///< Its lock lapsed before intake: it is delivered again.
  };
  Kind kind = Kind::kMalformed;
  std::vector<std::size_t> handlers;
  Task base;  ///< topic, subscription, sequence number, correlation id (and for kWork the rest).
  std::chrono::system_clock::time_point enqueued_time{};
  std::string reason;
};

/// Sorts one message of `options`' subscription: bounds the body before parsing it, reads the
/// subject as `options.subject_source` says, routes it with `router`.
Classification classify(const sb::ReceivedMessage& message,
                        const config::SubscriptionOptions& options, const routing::Router& router,
                        std::chrono::system_clock::time_point now);

/// The ledger row that records a message before it is deferred (`body_limit` bytes of its body).
ledger::DeferredMessage row_of(const Task& base, std::chrono::system_clock::time_point enqueued,
                               ledger::State state, std::size_t body_limit);

class Intake {
 public:
  Intake(ledger::Ledger& ledger, TaskRunner& runner, InFlight& in_flight, Held& held,
         ServiceCounters& counters, LedgerHealth& health, std::size_t body_limit)
      : ledger_(ledger),
        runner_(runner),
        in_flight_(in_flight),
        held_(held),
        counters_(counters),
        health_(health),
        body_limit_(body_limit) {}

  struct Work {
    sb::ReceivedMessage* message;
    Classification classification;
  };

  /// Classifies a batch, settles on the link what has no handler or a bad body (waiting a
  /// bounded time for Service Bus to confirm), and returns the messages to record and defer.
  std::vector<Work> sort(Route& route, std::vector<sb::ReceivedMessage>& batch);

  enum class Recorded { kYes, kLedgerUnwritable };
  /// Records `work` in the ledger (`deferring`), defers each message, marks them `deferred` and
  /// dispatches their handlers. `kLedgerUnwritable` when the ledger refused the record: nothing
  /// was deferred, and the caller keeps the messages (their locks are renewed) to try again.
  /// A `defer = "when-slow"` subscription's messages are held instead (they move to `Held`) and
  /// their handlers dispatched at once: nothing is written.
  Recorded record_then_defer(Route& route, std::vector<Work>& work);

 private:
  void hold(Route& route, std::vector<Work>& work);

  ledger::Ledger& ledger_;
  TaskRunner& runner_;
  InFlight& in_flight_;
  Held& held_;
  ServiceCounters& counters_;
  LedgerHealth& health_;
  const std::size_t body_limit_;
};

/// Waits for each future until `deadline`; the errors (or "not confirmed") by index.
std::vector<std::string> wait_all(std::vector<std::future<void>>& futures,
                                  std::chrono::steady_clock::time_point deadline);

}  // namespace metro::dispatch
