// The in-process task queue: due tasks in a deque served by a WorkerPool, delayed ones in a heap
// watched by one timer thread.

#include <condition_variable>
#include <deque>
#include <mutex>
#include <queue>
#include <thread>

#include <metro/dispatch/task_queue.hpp>
#include "worker_pool.hpp"

namespace metro::dispatch {
namespace {

class InProcessQueue : public TaskQueue {
 public:
  explicit InProcessQueue(std::size_t workers) : workers_(workers), pool_(workers) {}

  ~InProcessQueue() override { shutdown(std::chrono::milliseconds::max(), nullptr); }

  void start(Runner runner) override {
    std::lock_guard lock(mutex_);
    runner_ = std::move(runner);
    timer_ = std::jthread([this](std::stop_token stop) { watch_timers(stop); });
  }

  bool push(Task task, Clock::time_point not_before) override {
    std::lock_guard lock(mutex_);
    if (stopping_) return false;
    if (not_before > Clock::now()) {
      delayed_.push({not_before, sequence_++, std::move(task)});
      timer_wake_.notify_all();
      return true;
    }
    enqueue(std::move(task));
    return true;
  }

  std::size_t busy() const override {
    std::lock_guard lock(mutex_);
    return due_.size() + running_;
  }

  std::size_t workers() const override { return workers_; }

  bool shutdown(std::chrono::milliseconds grace, std::vector<Task>* dropped) override {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      timer_wake_.notify_all();
    }
    // Called again (by the destructor, or after a first grace ran out) it waits again: the
    // queue's threads have all ended when a call with an unbounded grace returns.
    if (timer_.joinable()) {
      timer_.request_stop();
      timer_.join();
    }
    bool finished = pool_.shutdown(grace);
    std::lock_guard lock(mutex_);
    if (dropped != nullptr) {
      for (auto& task : due_) dropped->push_back(std::move(task));
      while (!delayed_.empty()) {
        dropped->push_back(delayed_.top().task);
        delayed_.pop();
      }
    }
    due_.clear();
    return finished;
  }

 private:
  struct Delayed {
    Clock::time_point at;
    std::uint64_t order;  // Ties run in the order they were pushed.
    Task task;
    bool operator>(const Delayed& o) const { return at != o.at ? at > o.at : order > o.order; }
  };

  // Called with mutex_ held.
  void enqueue(Task task) {
    due_.push_back(std::move(task));
    pool_.submit([this] { run_one(); });
  }

  void run_one() {
    Task task;
    {
      std::lock_guard lock(mutex_);
      if (due_.empty()) return;  // Handed back by shutdown.
      task = std::move(due_.front());
      due_.pop_front();
      ++running_;
    }
    runner_(task);
    std::lock_guard lock(mutex_);
    --running_;
  }

  void watch_timers(const std::stop_token& stop) {
    std::unique_lock lock(mutex_);
    while (!stop.stop_requested() && !stopping_) {
      if (delayed_.empty()) {
        timer_wake_.wait(lock, stop, [&] { return stopping_ || !delayed_.empty(); });
        continue;
      }
      auto at = delayed_.top().at;
      if (Clock::now() < at) {
        timer_wake_.wait_until(lock, stop, at, [&] {
          return stopping_ || (!delayed_.empty() && delayed_.top().at < at);
        });
        continue;
      }
      auto task = delayed_.top().task;
      delayed_.pop();
      enqueue(std::move(task));
    }
  }

  const std::size_t workers_;
  mutable std::mutex mutex_;
  std::condition_variable_any timer_wake_;
  Runner runner_;
  std::deque<Task> due_;
  std::priority_queue<Delayed, std::vector<Delayed>, std::greater<>> delayed_;
  std::uint64_t sequence_ = 0;
  std::size_t running_ = 0;
  bool stopping_ = false;
  WorkerPool pool_;
  std::jthread timer_;
};

}  // namespace

std::unique_ptr<TaskQueue> make_in_process_queue(std::size_t workers) {
  return std::make_unique<InProcessQueue>(workers);
}

}  // namespace metro::dispatch
