#pragma once

// The messages this process is handling, and what happens to each when a handler run ends:
// run it again (retry with backoff), wait for the other handlers, complete it, park it, dead-
// letter it, or leave it for an explicit completion. Pure: no bus, no ledger, no threads of its
// own, time and jitter passed in, so it is unit-tested alone.
// Thread-safety: every member may be called from any thread; one lock guards the table.

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <metro/config/config.hpp>
#include <metro/dispatch/handler.hpp>
#include <metro/ledger/ledger.hpp>

#include "../common/thread_annotations.hpp"

namespace metro::dispatch {

/// What to do after a handler run ended.
struct Decision {
  enum class Kind {
    kUnknown,             ///< The message is not (or no longer) tracked: nothing to do.
    kWait,                ///< Other handlers of the message are still to finish.
    kRetry,               ///< Run `next` again after `delay`.
    kLeave,               ///< Stopping with attempts left: it stays `retrying` for the next start.
    kComplete,            ///< Every handler succeeded: complete it.
    kPark,                ///< A handler used its attempts up (`on_failure = "park"`).
    kDeadLetter,          ///< A handler used its attempts up (`on_failure = "dead-letter"`).
    kAwaitExplicit,       ///< Every handler succeeded; one of them completes it itself.
    kCompletedByRequest,  ///< Completed by request meanwhile: nothing more to run or settle.
  };
  Kind kind = Kind::kUnknown;
  Task next;  ///< kRetry: the task to run again.
  std::chrono::milliseconds delay{0};
  std::string error;  ///< The last error (`handler: why`).
  std::string correlation;
  std::size_t route = 0;  ///< The route the message came from.
};

class InFlight {
 public:
  /// `capacity`: most messages in hand at once (what `has_room` measures).
  explicit InFlight(std::size_t capacity) : capacity_(capacity) {}

  /// Starts tracking a deferred message of route `route` whose handlers are `handlers` (indices
  /// into `options.handlers`, which must outlive the entry). `attempts` holds the attempts made
  /// so far per handler (numbering continues); with `fresh_budget` they do not count against the
  /// retry policy. The tasks to queue, one per handler; nullopt when the message is tracked
  /// already.
  std::optional<std::vector<Task>> begin(std::size_t route,
                                         const config::SubscriptionOptions& options,
                                         const Task& base, const std::vector<std::size_t>& handlers,
                                         const std::map<std::size_t, int>& attempts,
                                         bool fresh_budget) EXCLUDES(mutex_);

  /// A run of `task` ended with `result`. `jitter` in [0, 1) spreads retries; `stopping` turns
  /// retries into kLeave. Entries that reach an end are dropped.
  Decision finished(const Task& task, Outcome outcome, const std::string& error, double jitter,
                    bool stopping) EXCLUDES(mutex_);

  /// Whether `task` belongs to the message tracked under its key (and not to an earlier message
  /// with the same sequence number), and the handler is one of its pending ones.
  bool is_current(const Task& task) const EXCLUDES(mutex_);
  /// Marks a tracked message completed by request; false when it is not tracked.
  bool mark_completed(const ledger::MessageKey& key) EXCLUDES(mutex_);
  /// The message id tracked under `key`; nullopt when none is.
  std::optional<std::string> message_id(const ledger::MessageKey& key) const EXCLUDES(mutex_);
  bool contains(const ledger::MessageKey& key) const EXCLUDES(mutex_);
  /// Stops tracking a message (it stays deferred; the next start or the reaper takes it up).
  void drop(const ledger::MessageKey& key) EXCLUDES(mutex_);
  std::size_t size() const EXCLUDES(mutex_);
  /// Room for more messages: how many (0 when full).
  std::size_t room() const EXCLUDES(mutex_);
  /// Waits until there is room, `stop()` holds or `deadline` passes; true when there is room.
  bool wait_for_room(std::chrono::steady_clock::time_point deadline,
                     const std::function<bool()>& stop) EXCLUDES(mutex_);
  /// Called (outside the lock) whenever an entry is dropped, so waiting intake can go on.
  void on_room(std::function<void()> callback) EXCLUDES(mutex_);
  /// Wakes `wait_for_room` waiters (to look at their stop condition).
  void notify() EXCLUDES(mutex_);

 private:
  enum class Progress { kPending, kSucceeded, kParked, kDeadLetter };
  struct Entry {
    std::size_t route = 0;
    const config::SubscriptionOptions* options = nullptr;
    Task base;  // Without handler and attempt.
    std::vector<std::size_t> handlers;
    std::map<std::size_t, Progress> progress;
    std::map<std::size_t, int> budget_base;  // Attempts not counted against this budget.
    std::string last_error;
    bool completed_by_request = false;
  };

  void dropped() EXCLUDES(mutex_);

  const std::size_t capacity_;
  mutable Mutex mutex_;
  CondVar room_;
  std::map<ledger::MessageKey, Entry> entries_ GUARDED_BY(mutex_);
  std::function<void()> on_room_ GUARDED_BY(mutex_);
};

ledger::MessageKey key_of(const Task& task);

}  // namespace metro::dispatch
