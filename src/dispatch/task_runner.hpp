#pragma once

// Handler runs: `dispatch` puts a deferred message's handler tasks on the task queue, and `run`
// (on a worker) records the run in the ledger, runs the handler, and carries out what InFlight
// decides: retry later, complete, park, dead-letter or wait for an explicit completion.
// Thread-safety: `dispatch` from any thread; `run` from the queue's workers.

#include <atomic>
#include <map>
#include <random>
#include <vector>

#include <metro/config/config.hpp>
#include <metro/dispatch/task_queue.hpp>
#include <metro/ledger/ledger.hpp>

#include "../common/thread_annotations.hpp"
#include "counters.hpp"
#include "in_flight.hpp"
#include "ledger_health.hpp"
#include "route.hpp"
#include "settler.hpp"

namespace metro::dispatch {

class TaskRunner {
 public:
  TaskRunner(const Routes& routes, ledger::Ledger& ledger, InFlight& in_flight, Settler& settler,
             TaskQueue& queue, ServiceCounters& counters, LedgerHealth& health,
             const std::atomic<bool>& stopping)
      : routes_(routes),
        ledger_(ledger),
        in_flight_(in_flight),
        settler_(settler),
        queue_(queue),
        counters_(counters),
        health_(health),
        stopping_(stopping) {}

  /// Queues a run of each of `handlers` for a deferred message of `route`. `attempts` gives the
  /// attempts made so far per handler; `fresh_budget` does not count them against the retry
  /// policy. False when the message is being handled already.
  bool dispatch(Route& route, const Task& base, const std::vector<std::size_t>& handlers,
                const std::map<std::size_t, int>& attempts, bool fresh_budget);
  /// Runs one task (a worker's job).
  void run(const Task& task);
  /// Asks every handler's runs under way to end (the stop's grace is over).
  void interrupt();

 private:
  void act(Route& route, const Task& task, const Decision& decision);
  /// A ledger write that must not stop a worker: logged and reported to the health.
  template <class F>
  void write(const ledger::MessageKey& key, const std::string& correlation, const char* what, F f);

  const Routes& routes_;
  ledger::Ledger& ledger_;
  InFlight& in_flight_;
  Settler& settler_;
  TaskQueue& queue_;
  ServiceCounters& counters_;
  LedgerHealth& health_;
  const std::atomic<bool>& stopping_;
  Mutex rng_mutex_;
  std::mt19937_64 rng_ GUARDED_BY(rng_mutex_){std::random_device{}()};
};

}  // namespace metro::dispatch
