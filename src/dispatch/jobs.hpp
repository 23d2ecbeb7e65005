#pragma once

// Bulk jobs: retry, complete or dead-letter every message a filter matched, carried out in the
// background at a bounded pace. The job and the keys it acts on live in the ledger, so a job goes
// on after a restart where it stopped; each message's outcome is recorded there and written as an
// audit line. One job runs at a time, oldest first.
//
// The pace leaves live traffic its throughput: at most `rate` messages a second, and a retry
// waits while the messages in hand fill half of the room in flight (the listener keeps the other
// half), so that under load the job slows down rather than the subscription.
//
// Thread-safety: `start`/`stop` from the service's thread; `wake` and `cancel` from any thread.

#include <chrono>
#include <functional>
#include <future>
#include <set>
#include <stop_token>
#include <string>
#include <thread>

#include <metro/ledger/ledger.hpp>

#include "../common/thread_annotations.hpp"

namespace metro::dispatch {

/// How a job acts on one message: the service's own operations.
struct JobActions {
  /// Runs the handlers again; throws the reason when it cannot.
  std::function<void(const ledger::MessageKey&)> retry;
  /// Queue a completion / dead-letter; the future is ready when Service Bus confirmed.
  std::function<std::future<void>(const ledger::MessageKey&)> complete;
  std::function<std::future<void>(const ledger::MessageKey&, const std::string& reason,
                                  const std::string& description)>
      dead_letter;
  /// Whether there is room in flight for one more retried message now.
  std::function<bool()> room_for_retry;
};

struct JobLimits {
  double rate = 100;  ///< Messages a second, at most.
  /// Most keys read from the ledger (and outcomes recorded) at once; fewer at a low rate, so that
  /// a batch takes about a second.
  std::size_t batch = 50;
  /// The longest wait for Service Bus to confirm one completion or dead-letter.
  std::chrono::milliseconds settle_wait{std::chrono::minutes(3)};
};

class JobRunner {
 public:
  JobRunner(ledger::Ledger& ledger, JobActions actions, JobLimits limits)
      : ledger_(ledger), actions_(std::move(actions)), limits_(limits) {}
  ~JobRunner() { stop(); }
  JobRunner(const JobRunner&) = delete;
  JobRunner& operator=(const JobRunner&) = delete;

  /// Starts the thread, which takes up the `queued` and `running` jobs of the ledger, oldest
  /// first, while it holds the ledger's exclusive right `bulk-jobs` (one instance of several
  /// sharing a ledger runs them).
  void start();
  /// Ends the thread between two messages, without waiting for Service Bus to confirm the
  /// settlements under way (those are acted on again at the next start); a job under way stays
  /// `running` in the ledger and goes on then. Idempotent.
  void stop();
  /// A job was created.
  void wake() EXCLUDES(mutex_);
  /// Cancels a queued or running job (its messages not yet acted on are left as they are); false
  /// when it is unknown or finished. `who` is named in the job's error.
  bool cancel(const std::string& id, const std::string& who) EXCLUDES(mutex_);

 private:
  void loop(const std::stop_token& stop);
  void run(ledger::Job job, const std::stop_token& stop);
  /// Waits until `until`, a stop or a cancel of `id`; false when stopped or cancelled.
  bool pause(std::chrono::steady_clock::time_point until, const std::stop_token& stop,
             const std::string& id) EXCLUDES(mutex_);
  bool cancelled(const std::string& id) EXCLUDES(mutex_);

  ledger::Ledger& ledger_;
  const JobActions actions_;
  const JobLimits limits_;
  Mutex mutex_;
  CondVar wake_;
  bool woken_ GUARDED_BY(mutex_) = false;
  std::set<std::string> cancelled_ GUARDED_BY(mutex_);
  std::jthread thread_;  // Started and joined by the service's thread only.
};

/// A new job id (16 hex digits).
std::string new_job_id();

}  // namespace metro::dispatch
