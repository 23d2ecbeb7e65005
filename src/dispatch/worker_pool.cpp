#include <metro/dispatch/worker_pool.hpp>

namespace metro::dispatch {

WorkerPool::WorkerPool(std::size_t workers) {
  for (std::size_t i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
}

WorkerPool::~WorkerPool() {
  shutdown(std::chrono::milliseconds::max());
  // A job that outlived the grace period is still joined here: a thread is never abandoned.
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  threads_.clear();
}

bool WorkerPool::submit(std::function<void()> job) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return false;
    queue_.push_back(std::move(job));
  }
  wake_.notify_one();
  return true;
}

std::size_t WorkerPool::idle() const {
  std::lock_guard lock(mutex_);
  auto waiting = queue_.size() + busy_;
  return waiting >= threads_.size() ? 0 : threads_.size() - waiting;
}

std::size_t WorkerPool::queued() const {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

bool WorkerPool::shutdown(std::chrono::milliseconds grace,
                          std::vector<std::function<void()>>* dropped) {
  std::unique_lock lock(mutex_);
  stopping_ = true;
  if (dropped != nullptr) {
    for (auto& job : queue_) dropped->push_back(std::move(job));
  }
  queue_.clear();
  wake_.notify_all();
  auto done = [&] { return busy_ == 0; };
  if (grace == std::chrono::milliseconds::max()) {
    finished_.wait(lock, done);
    return true;
  }
  return finished_.wait_for(lock, grace, done);
}

void WorkerPool::work() {
  while (true) {
    std::function<void()> job;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
      ++busy_;
    }
    job();
    {
      std::lock_guard lock(mutex_);
      --busy_;
    }
    finished_.notify_all();
  }
}

}  // namespace metro::dispatch
