#pragma once

/// Where tasks wait for a worker: the seam between deciding that a handler runs and running it.
/// In-process now (a pool of threads); a Redis or Celery queue fits the same interface.
/// Thread-safety: every member may be called from any thread.

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

#include <metro/dispatch/handler.hpp>

namespace metro::dispatch {

class TaskQueue {
 public:
  using Clock = std::chrono::steady_clock;
  /// Runs one task on a worker; called by the queue, never concurrently with itself more often
  /// than there are workers.
  using Runner = std::function<void(const Task&)>;

  virtual ~TaskQueue() = default;
  /// Starts the workers; each task taken from the queue is handed to `runner`.
  virtual void start(Runner runner) = 0;
  /// Queues a task to run once `not_before` has passed. False once shut down (it will not run).
  virtual bool push(Task task, Clock::time_point not_before = {}) = 0;
  /// Tasks queued (due now) or running: the work the workers have in hand.
  virtual std::size_t busy() const = 0;
  /// Workers that run tasks.
  virtual std::size_t workers() const = 0;
  /// Stops taking tasks, hands back those not started (due or delayed) in `dropped`, and waits up
  /// to `grace` for the running ones. True when they all finished in time.
  virtual bool shutdown(std::chrono::milliseconds grace, std::vector<Task>* dropped) = 0;
};

/// A queue served by `workers` threads of this process, with a timer for delayed tasks.
std::unique_ptr<TaskQueue> make_in_process_queue(std::size_t workers);

}  // namespace metro::dispatch
