#pragma once

/// A fixed pool of worker threads that run jobs from a queue, and whose shutdown lets the running
/// jobs finish within a grace period. Thread-safety: every member may be called from any thread.

#include <chrono>
#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "../common/thread_annotations.hpp"

namespace metro::dispatch {

class WorkerPool {
 public:
  explicit WorkerPool(std::size_t workers);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Queues a job; false once shutdown has begun (the job is not run).
  bool submit(std::function<void()> job) EXCLUDES(mutex_);
  /// Workers not busy with a job right now (what a listener may prefetch for).
  std::size_t idle() const EXCLUDES(mutex_);
  std::size_t queued() const EXCLUDES(mutex_);

  /// Stops taking jobs, drops the queued ones (returned, so the caller can give their messages
  /// back), waits up to `grace` for the running ones. True when all finished in time. May be
  /// called again to wait longer; the destructor joins every thread.
  bool shutdown(std::chrono::milliseconds grace,
                std::vector<std::function<void()>>* dropped = nullptr) EXCLUDES(mutex_);

 private:
  void work() EXCLUDES(mutex_);

  mutable Mutex mutex_;
  CondVar wake_;
  CondVar finished_;
  std::deque<std::function<void()>> queue_ GUARDED_BY(mutex_);
  std::size_t busy_ GUARDED_BY(mutex_) = 0;
  std::size_t sleeping_ GUARDED_BY(mutex_) = 0;  // Workers waiting for a job: submit wakes one.
  bool stopping_ GUARDED_BY(mutex_) = false;
  const std::size_t size_;
  std::vector<std::jthread> threads_;  // Made in the constructor, joined in the destructor.
};

}  // namespace metro::dispatch
