#pragma once

// The settler: one thread that completes and dead-letters deferred messages by sequence number
// (receive-by-sequence-number + update-disposition), completions 100 at a time per subscription,
// retrying what failed for a passing reason for about two minutes, and records the outcome in the
// ledger. A settlement waits up to 10 ms for others to share its requests and its ledger write
// (not when 100 are queued, nor when stopping), and the thread is woken once per batch, not per
// settlement. An outcome the ledger cannot take now (PostgreSQL restarting, a full disk) is kept
// and written when it can be, so the ledger ends up saying what Service Bus did. Thread-safety:
// `enqueue` may be called from any thread; `start`/`stop` from the service's.

#include <chrono>
#include <deque>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <metro/ledger/ledger.hpp>
#include <metro/sb/client.hpp>

#include "../common/thread_annotations.hpp"
#include "counters.hpp"
#include "ledger_health.hpp"
#include "route.hpp"

namespace metro::dispatch {

class Settler {
 public:
  Settler(ledger::Ledger& ledger, ServiceCounters& counters, LedgerHealth& health)
      : ledger_(ledger), counters_(counters), health_(health) {}
  ~Settler() { stop(); }
  Settler(const Settler&) = delete;
  Settler& operator=(const Settler&) = delete;

  void start() EXCLUDES(mutex_);
  /// Queues a settlement. The future is ready when Service Bus confirmed (or the message had
  /// been settled before); it fails with the last error when the retries are used up, and with
  /// `ConflictError` once the settler has stopped.
  std::future<void> enqueue(Route& route, const ledger::MessageKey& key,
                            sb::Disposition disposition, std::string reason,
                            std::string description, std::string correlation,
                            DeadLetterCause cause = DeadLetterCause::kOperator) EXCLUDES(mutex_);
  /// Settles what is queued (retries get one last try), then ends the thread. Idempotent.
  void stop() EXCLUDES(mutex_);

 private:
  struct Item {
    Route* route = nullptr;
    ledger::MessageKey key;
    sb::Disposition disposition = sb::Disposition::kComplete;
    std::string reason;
    std::string description;
    std::string correlation;
    DeadLetterCause cause = DeadLetterCause::kOperator;
    std::shared_ptr<std::promise<void>> done;
    int attempts = 0;  // Failed tries so far.
    std::chrono::steady_clock::time_point not_before{};
    std::chrono::steady_clock::time_point queued{};  // When first enqueued.
  };

  /// A settlement Service Bus confirmed that the ledger has not recorded yet.
  struct Unrecorded {
    std::vector<ledger::MessageKey> keys;
    ledger::State state = ledger::State::kCompleted;
    std::string note;
  };

  void loop() EXCLUDES(mutex_);
  /// Writes what is unrecorded (when due, or `force`); true when nothing is left.
  bool record_pending(bool force) EXCLUDES(mutex_);
  void record(Unrecorded outcome) EXCLUDES(mutex_);
  void settle_batch(std::deque<Item>& batch) EXCLUDES(mutex_);
  void settle_chunk(Route& route, const std::vector<Item*>& items) EXCLUDES(mutex_);
  bool still_deferred(Route& route, std::int64_t sequence_number);

  ledger::Ledger& ledger_;
  ServiceCounters& counters_;
  LedgerHealth& health_;
  Mutex mutex_;
  CondVar wake_;
  std::deque<Item> items_ GUARDED_BY(mutex_);
  std::deque<Unrecorded> unrecorded_ GUARDED_BY(mutex_);
  std::chrono::steady_clock::time_point record_at_ GUARDED_BY(mutex_){};
  std::chrono::milliseconds record_backoff_ GUARDED_BY(mutex_){0};
  bool stopping_ GUARDED_BY(mutex_) = false;
  bool gone_ GUARDED_BY(mutex_) = false;
  bool idle_ GUARDED_BY(mutex_) = false;       // Asleep with nothing due: enqueue wakes it.
  bool gathering_ GUARDED_BY(mutex_) = false;  // Waiting for more to share a request.
  std::thread thread_;  // Started and joined by the service's thread only.
};

}  // namespace metro::dispatch
