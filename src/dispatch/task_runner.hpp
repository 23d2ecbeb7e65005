#pragma once

// Handler runs: `dispatch` puts a deferred message's handler tasks on the task queue, and `run`
// (on a worker) records the run in the ledger, runs the handler, and carries out what InFlight
// decides: retry later, complete, park, dead-letter or wait for an explicit completion.
// An asynchronous handler's run (a Celery task) leaves the worker once it is sent: its outcome
// arrives on the handler's own thread and is recorded and acted on by a few outcome threads, so
// that runs waiting for Celery hold no worker.
// Thread-safety: `dispatch` from any thread; `run` from the queue's workers; the rest from the
// service's thread.

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include <metro/config/config.hpp>
#include <metro/dispatch/task_queue.hpp>
#include <metro/ledger/ledger.hpp>

#include "../common/thread_annotations.hpp"
#include "counters.hpp"
#include "held.hpp"
#include "in_flight.hpp"
#include "ledger_health.hpp"
#include "route.hpp"
#include "settler.hpp"
#include "worker_pool.hpp"

namespace metro::dispatch {

class TaskRunner {
 public:
  TaskRunner(const Routes& routes, ledger::Ledger& ledger, InFlight& in_flight, Held& held,
             Settler& settler, TaskQueue& queue, ServiceCounters& counters, LedgerHealth& health,
             const std::atomic<bool>& stopping);

  /// Queues a run of each of `handlers` for a deferred (or held) message of `route`. `attempts`
  /// gives the attempts made so far per handler; `fresh_budget` does not count them against the
  /// retry policy. `resume` names, per handler, a run an earlier metro left out (its task id): that
  /// run's outcome is picked up rather than the handler run again. False when the message is
  /// being handled already.
  bool dispatch(Route& route, const Task& base, const std::vector<std::size_t>& handlers,
                const std::map<std::size_t, int>& attempts, bool fresh_budget,
                const std::map<std::size_t, std::string>& resume = {});
  /// Runs one task (a worker's job).
  void run(const Task& task);
  /// Asks every handler's runs under way to end (the stop's grace is over).
  void interrupt();
  /// Waits until no asynchronous run is out, or `deadline`; true when none is.
  bool wait_for_async(std::chrono::steady_clock::time_point deadline) EXCLUDES(async_mutex_);
  /// Stops waiting for asynchronous runs (those out are abandoned: they stay `running` for the
  /// next start) and ends the outcome threads once what they hold is recorded. Call once the
  /// queue's workers have stopped.
  void stop();

 private:
  class AsyncRun;

  void start_async(Route& route, std::size_t index, const Task& task, ledger::HandlerRun run);
  /// Records the end of a run and acts on it (a worker's or an outcome thread's job).
  void finish(Route& route, std::size_t index, const Task& task, ledger::HandlerRun run,
              const Result& result);
  void act(Route& route, const Task& task, const Decision& decision);
  /// Runs `job` on an outcome thread (here, when they have stopped).
  void post(std::function<void()> job);
  void async_ended() EXCLUDES(async_mutex_);
  /// A ledger write that must not stop a worker: logged and reported to the health.
  template <class F>
  void write(const ledger::MessageKey& key, const std::string& correlation, const char* what, F f);
  /// Records a run of `task`'s message: kept with it while it is held (dropped when it was
  /// settled on its link or superseded), else written to the ledger (`begin`: as the start of a
  /// run).
  void record(Route& route, const Task& task, const ledger::HandlerRun& run, bool begin);

  const Routes& routes_;
  ledger::Ledger& ledger_;
  InFlight& in_flight_;
  Held& held_;
  Settler& settler_;
  TaskQueue& queue_;
  ServiceCounters& counters_;
  LedgerHealth& health_;
  const std::atomic<bool>& stopping_;
  Mutex rng_mutex_;
  std::mt19937_64 rng_ GUARDED_BY(rng_mutex_){std::random_device{}()};
  /// Records outcomes of asynchronous runs; null when no handler is asynchronous.
  std::unique_ptr<WorkerPool> outcomes_;
  Mutex async_mutex_;
  CondVar async_changed_;
  std::size_t async_out_ GUARDED_BY(async_mutex_) = 0;
};

}  // namespace metro::dispatch
