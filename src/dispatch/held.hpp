#pragma once

// Held messages (`defer = "when-slow"`): a message whose handlers start as soon as it is
// received, under its lock (which the client renews), with nothing in the ledger. A message
// whose runs all end well within `defer_after` is completed on its link: two Service Bus
// operations and no ledger write. Whatever outlives `defer_after`, needs a retry, fails or leaves
// its completion to a handler is deferred exactly as intake defers (recorded first, with the runs
// so far), and from then on is an ordinary deferred message.
//
// Each held message is in one stage: locked (its handlers may run), deferring (being recorded and
// deferred: callers that want to write about it wait for the end), settled (completed on its
// link while some of its runs go on: what they report is dropped, as it has no ledger row) or
// gone (its lock was lost: it is delivered again, and what its runs report is dropped). A run
// reports for the message it was started for: a run of an earlier message with the same sequence
// number (the numbers started again) is dropped, never taken for one of the new message's. One
// thread defers the messages whose `defer_after` passed and collects the confirmations of
// completions.
// Thread-safety: every member may be called from any thread; `start`/`stop` from the service's.

#include <chrono>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include <metro/ledger/ledger.hpp>
#include <metro/sb/client.hpp>

#include "../common/thread_annotations.hpp"
#include "counters.hpp"
#include "in_flight.hpp"
#include "ledger_health.hpp"
#include "route.hpp"

namespace metro::dispatch {

class Held {
 public:
  using Clock = std::chrono::steady_clock;

  Held(ledger::Ledger& ledger, InFlight& in_flight, ServiceCounters& counters, LedgerHealth& health,
       std::size_t body_limit)
      : ledger_(ledger),
        in_flight_(in_flight),
        counters_(counters),
        health_(health),
        body_limit_(body_limit) {}
  ~Held() { stop(); }
  Held(const Held&) = delete;
  Held& operator=(const Held&) = delete;

  void start() EXCLUDES(mutex_);
  /// Gives back what is still held (it is delivered again), waits a bounded time for the
  /// completions under way, and ends the thread. Idempotent; afterwards `hold` refuses.
  void stop() EXCLUDES(mutex_);

  enum class Hold {
    kHeld,       ///< Held: run its handlers.
    kRefreshed,  ///< Held already (its lock had lapsed): the new lock replaces the old one.
    kRefused,    ///< Given back (stopping, or the message is being settled or deferred).
  };
  /// Holds a received message of `route` (`base`: its task, without handler and attempt) until
  /// its handlers are done, or until `defer_at` when it is deferred.
  Hold hold(Route& route, sb::ReceivedMessage message, const Task& base,
            std::chrono::system_clock::time_point enqueued, Clock::time_point defer_at)
      EXCLUDES(mutex_);

  /// Keeps the record of a run (its start, or its end) of a held message (`message_id`: the
  /// message the run is of), to be written if it is deferred; drops it when that message was
  /// settled on its link, lost its lock or was superseded. False when the message is not held:
  /// write it to the ledger. Waits while the message is being deferred.
  bool keep_run(const ledger::MessageKey& key, const std::string& message_id,
                const ledger::HandlerRun& run) EXCLUDES(mutex_);

  enum class Deferral {
    kDeferred,    ///< It was held and is deferred and recorded now.
    kNotHeld,     ///< Not held (deferred before, or never held): act as for any deferred message.
    kGone,        ///< Its lock was lost, it was given back or completed on its link: drop it.
    kSuperseded,  ///< A newer message has its sequence number: drop what was of the earlier one.
  };
  /// Defers a held message now, ledger first. While the ledger cannot be written it keeps the
  /// message (its lock renewed) and tries again, until `stopping` holds: then it gives it back.
  Deferral defer(const ledger::MessageKey& key, const std::string& message_id,
                 const std::function<bool()>& stopping) EXCLUDES(mutex_);

  /// Completes a held message on its link; the future is ready when Service Bus confirmed.
  /// Nullopt when the message is not held (complete it by sequence number); ready at once when
  /// its completion on the link is under way already.
  std::optional<std::future<void>> complete(const ledger::MessageKey& key) EXCLUDES(mutex_);

  /// Every run of `message_id`, completed on its link, has ended: nothing is left to drop.
  void ended(const ledger::MessageKey& key, const std::string& message_id) EXCLUDES(mutex_);

  std::size_t size() const EXCLUDES(mutex_);

 private:
  enum class Stage { kLocked, kDeferring, kSettled, kGone };
  struct Entry {
    Route* route = nullptr;
    sb::ReceivedMessage message;
    Task base;
    std::chrono::system_clock::time_point enqueued{};
    Clock::time_point defer_at{};
    Stage stage = Stage::kLocked;
    std::vector<ledger::HandlerRun> runs;  // Kept while locked, written when deferred.
    Clock::time_point gone_at{};  // Since when settled or gone.
  };
  /// A completion on the link, until Service Bus confirms it.
  struct Settling {
    ledger::MessageKey key;
    std::string correlation;
    std::future<void> confirmed;
    std::shared_ptr<std::promise<void>> done;
  };
  enum class Batch { kDone, kLedgerUnwritable };

  void loop() EXCLUDES(mutex_);
  /// Defers `keys` of `route` (all in stage deferring): records, defers, writes the runs kept,
  /// and ends their holding (deferred, or gone).
  Batch defer_batch(Route& route, const std::vector<ledger::MessageKey>& keys) EXCLUDES(mutex_);
  /// Takes the confirmed completions, in order, and `confirm`s them (the thread's job: no other
  /// takes from `settling_`).
  void collect() EXCLUDES(mutex_);
  /// A completion Service Bus answered: counted and logged, its waiter told.
  void confirm(Settling& settling);
  /// Gives back a message that is not held (abandoned without waiting).
  static void give_back(Route& route, const sb::ReceivedMessage& message);

  ledger::Ledger& ledger_;
  InFlight& in_flight_;
  ServiceCounters& counters_;
  LedgerHealth& health_;
  const std::size_t body_limit_;
  mutable Mutex mutex_;
  CondVar changed_;  // A stage changed, an entry came or went, or stopping.
  std::map<ledger::MessageKey, Entry> entries_ GUARDED_BY(mutex_);
  std::deque<Settling> settling_ GUARDED_BY(mutex_);
  bool stopping_ GUARDED_BY(mutex_) = false;
  /// When the thread looks at its timers next (set under the lock before each of its waits).
  Clock::time_point wake_at_ GUARDED_BY(mutex_){};
  std::thread thread_;  // Started and joined by the service's thread only.
};

/// How long after receipt a held message of `options` is deferred: `defer_after`, or a quarter of
/// the lock's duration as the message shows it (15 s when it does not).
std::chrono::milliseconds defer_after(const config::SubscriptionOptions& options,
                                      const sb::ReceivedMessage& message,
                                      std::chrono::system_clock::time_point now);

}  // namespace metro::dispatch
