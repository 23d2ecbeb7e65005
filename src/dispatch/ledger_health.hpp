#pragma once

// Whether the ledger can be written, as the last write or probe found. Intake stops while it
// cannot (a message must be recorded before it is deferred); one prober thread tries a small
// write with backoff and lets intake resume when it succeeds.
// Thread-safety: every member may be called from any thread.

#include <chrono>
#include <functional>
#include <optional>
#include <string>

#include "../common/thread_annotations.hpp"

namespace metro::dispatch {

class LedgerHealth {
 public:
  using Clock = std::chrono::steady_clock;

  /// A write failed: the ledger is unwritable for `why` until a write succeeds again.
  void failed(const std::string& why) EXCLUDES(mutex_);
  /// A write succeeded.
  void succeeded() EXCLUDES(mutex_);
  /// Why the ledger cannot be written; nullopt while it can.
  std::optional<std::string> problem() const EXCLUDES(mutex_);
  bool ok() const { return !problem(); }
  /// When a write last succeeded (or the epoch).
  Clock::time_point last_success() const EXCLUDES(mutex_);
  /// Whether a write failed within the last `d` (or fails now).
  bool failed_within(std::chrono::milliseconds d) const EXCLUDES(mutex_);
  /// Waits until the ledger is writable again, `stop` holds, or `deadline`; true when writable.
  bool wait_until_ok(Clock::time_point deadline, const std::function<bool()>& stop)
      EXCLUDES(mutex_);
  /// Waits until the ledger is unwritable, `stop` holds, or `deadline`; true when unwritable.
  bool wait_until_failed(Clock::time_point deadline, const std::function<bool()>& stop)
      EXCLUDES(mutex_);
  /// Wakes the waiters (to look at their stop condition).
  void notify() EXCLUDES(mutex_);
  /// Called (outside the lock) each time the ledger becomes writable again.
  void on_recovered(std::function<void()> callback) EXCLUDES(mutex_);

 private:
  mutable Mutex mutex_;
  CondVar changed_;
  std::optional<std::string> problem_ GUARDED_BY(mutex_);
  Clock::time_point last_success_ GUARDED_BY(mutex_){};
  std::optional<Clock::time_point> last_failure_ GUARDED_BY(mutex_);
  std::function<void()> on_recovered_ GUARDED_BY(mutex_);
};

}  // namespace metro::dispatch
