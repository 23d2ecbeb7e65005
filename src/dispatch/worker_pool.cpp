#include "worker_pool.hpp"

namespace metro::dispatch {

WorkerPool::WorkerPool(std::size_t workers) : size_(workers) {
  for (std::size_t i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
}

WorkerPool::~WorkerPool() {
  shutdown(std::chrono::milliseconds::max());
  // A job that outlived the grace period is still joined here: a thread is never abandoned.
  threads_.clear();
}

bool WorkerPool::submit(std::function<void()> job) {
  {
    MutexLock lock(mutex_);
    if (stopping_) return false;
    queue_.push_back(std::move(job));
    // A worker not asleep takes it when it looks at the queue next.
    if (sleeping_ == 0) return true;
  }
  wake_.notify_one();
  return true;
}

std::size_t WorkerPool::idle() const {
  MutexLock lock(mutex_);
  auto waiting = queue_.size() + busy_;
  return waiting >= size_ ? 0 : size_ - waiting;
}

std::size_t WorkerPool::queued() const {
  MutexLock lock(mutex_);
  return queue_.size();
}

bool WorkerPool::shutdown(std::chrono::milliseconds grace,
                          std::vector<std::function<void()>>* dropped) {
  MutexLock lock(mutex_);
  stopping_ = true;
  if (dropped != nullptr) {
    for (auto& job : queue_) dropped->push_back(std::move(job));
  }
  queue_.clear();
  wake_.notify_all();
  if (grace == std::chrono::milliseconds::max()) {
    while (busy_ != 0) finished_.wait(lock);
    return true;
  }
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (busy_ != 0) {
    if (finished_.wait_until(lock, deadline) == std::cv_status::timeout) break;
  }
  return busy_ == 0;
}

void WorkerPool::work() {
  while (true) {
    std::function<void()> job;
    {
      MutexLock lock(mutex_);
      while (!stopping_ && queue_.empty()) {
        ++sleeping_;
        wake_.wait(lock);
        --sleeping_;
      }
      if (queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
      ++busy_;
    }
    job();
    bool shutting_down = false;
    {
      MutexLock lock(mutex_);
      --busy_;
      shutting_down = stopping_;
    }
    if (shutting_down) finished_.notify_all();  // Only shutdown waits for it.
  }
}

}  // namespace metro::dispatch
