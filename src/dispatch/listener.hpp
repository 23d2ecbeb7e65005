#pragma once

// The listeners: no thread waits on a subscription. `arm` asks a subscription's receiver for as
// many messages as there is room for, with a callback; the client hands them over on its thread,
// and a pool of at most four listener threads (shared by every subscription) sorts, records,
// defers and dispatches them, then arms the receiver again. A subscription waits (asks for
// nothing) while the service has no room or the ledger cannot be written; a watcher probes an
// unwritable ledger with backoff and wakes the listeners when it can be written again.
// Thread-safety: `wake` from any thread; `start`/`stop` from the service's.

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include <metro/ledger/ledger.hpp>
#include <metro/sb/client.hpp>

#include "../common/thread_annotations.hpp"
#include "counters.hpp"
#include "in_flight.hpp"
#include "intake.hpp"
#include "ledger_health.hpp"
#include "route.hpp"
#include "worker_pool.hpp"

namespace metro::dispatch {

class Listener {
 public:
  Listener(const Routes& routes, Intake& intake, InFlight& in_flight, LedgerHealth& health,
           ledger::Ledger& ledger, ServiceCounters& counters)
      : routes_(routes),
        intake_(intake),
        in_flight_(in_flight),
        health_(health),
        ledger_(ledger),
        counters_(counters),
        slots_(routes.size()) {}
  ~Listener() { stop(); }
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  /// Starts the listener threads and the ledger watcher, and arms every subscription.
  void start() EXCLUDES(mutex_);
  /// Stops asking for messages, gives back what was received and not recorded, and ends every
  /// thread it started. Idempotent.
  void stop() EXCLUDES(mutex_);
  /// Room freed up or the ledger can be written again: arm the subscriptions that wait.
  void wake() EXCLUDES(mutex_);

 private:
  struct Slot {
    bool busy = false;     // From arming a receive until its batch is handled (or cancelled).
    bool waiting = false;  // Parked until there is room and a writable ledger.
  };

  void arm(Route& route) EXCLUDES(mutex_);
  void received(Route& route, std::vector<sb::ReceivedMessage> messages) EXCLUDES(mutex_);
  void listen_once(Route& route, std::vector<sb::ReceivedMessage>& messages) EXCLUDES(mutex_);
  void idle(Route& route) EXCLUDES(mutex_);
  bool stopping() const { return stopping_.load(); }
  void watch_ledger(const std::stop_token& stop);

  const Routes& routes_;
  Intake& intake_;
  InFlight& in_flight_;
  LedgerHealth& health_;
  ledger::Ledger& ledger_;
  ServiceCounters& counters_;
  mutable Mutex mutex_;
  CondVar changed_;
  std::vector<Slot> slots_ GUARDED_BY(mutex_);  // By route index.
  std::atomic<bool> stopping_{false};  // Read without the lock (by waits' stop predicates).
  bool started_ GUARDED_BY(mutex_) = false;
  std::unique_ptr<WorkerPool> pool_;  // Set in start, before any callback can run.
  std::jthread watcher_;
};

/// Abandons a message without waiting (it may run on the client's own thread).
void give_back(sb::Receiver& receiver, const sb::ReceivedMessage& message);

}  // namespace metro::dispatch
