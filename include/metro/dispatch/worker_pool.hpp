#pragma once

/// A fixed pool of worker threads that run jobs from a queue, and whose shutdown lets the running
/// jobs finish within a grace period. Thread-safety: every member may be called from any thread.

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace metro::dispatch {

class WorkerPool {
 public:
  explicit WorkerPool(std::size_t workers);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Queues a job; false once shutdown has begun (the job is not run).
  bool submit(std::function<void()> job);
  /// Workers not busy with a job right now (what a listener may prefetch for).
  std::size_t idle() const;
  std::size_t queued() const;

  /// Stops taking jobs, drops the queued ones (returned, so the caller can give their messages
  /// back), waits up to `grace` for the running ones. True when all finished in time.
  bool shutdown(std::chrono::milliseconds grace,
                std::vector<std::function<void()>>* dropped = nullptr);

 private:
  void work();

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable finished_;
  std::deque<std::function<void()>> queue_;
  std::vector<std::jthread> threads_;
  std::size_t busy_ = 0;
  bool stopping_ = false;
};

}  // namespace metro::dispatch
