#include "in_flight.hpp"

#include <algorithm>

#include "retry.hpp"

namespace metro::dispatch {

ledger::MessageKey key_of(const Task& task) {
  return {task.topic_name, task.subscription_name, task.sequence_number};
}

std::optional<std::vector<Task>> InFlight::begin(std::size_t route,
                                                 const config::SubscriptionOptions& options,
                                                 const Task& base,
                                                 const std::vector<std::size_t>& handlers,
                                                 const std::map<std::size_t, int>& attempts,
                                                 bool fresh_budget) {
  auto key = key_of(base);
  std::vector<Task> tasks;
  MutexLock lock(mutex_);
  if (entries_.count(key) != 0) return std::nullopt;
  Entry e;
  e.route = route;
  e.options = &options;
  e.base = base;
  e.handlers = handlers;
  for (auto i : handlers) {
    auto it = attempts.find(i);
    int made = it != attempts.end() ? it->second : 0;
    e.progress[i] = Progress::kPending;
    e.budget_base[i] = fresh_budget ? made : 0;
    Task t = base;
    t.handler = options.handlers.at(i).name;
    t.attempt = made + 1;
    tasks.push_back(std::move(t));
  }
  entries_.emplace(key, std::move(e));
  return tasks;
}

Decision InFlight::finished(const Task& task, Outcome outcome, const std::string& error,
                            double jitter, bool stopping) {
  Decision d;
  {
    MutexLock lock(mutex_);
    auto it = entries_.find(key_of(task));
    if (it == entries_.end() || it->second.base.message_id != task.message_id) return d;
    auto& e = it->second;
    d.correlation = e.base.correlation_id;
    d.route = e.route;
    std::optional<std::size_t> index;
    for (auto i : e.handlers) {
      if (e.options->handlers[i].name == task.handler) index = i;
    }
    if (!index || e.progress[*index] != Progress::kPending) return d;
    const auto& handler = e.options->handlers[*index];
    if (outcome == Outcome::kSuccess) {
      e.progress[*index] = Progress::kSucceeded;
    } else {
      e.last_error = task.handler + ": " + error;
      d.error = e.last_error;
      if (e.completed_by_request) {
        // Completed meanwhile: nothing is gained by running it again.
        e.progress[*index] = Progress::kSucceeded;
      } else {
        int made = task.attempt - e.budget_base[*index];
        auto delay = next_delay(handler.retry, made, jitter);
        if (delay && stopping) {
          entries_.erase(it);
          d.kind = Decision::Kind::kLeave;
          lock.unlock();
          dropped();
          return d;
        }
        if (delay) {
          d.kind = Decision::Kind::kRetry;
          d.next = task;
          ++d.next.attempt;
          d.next.resume_task_id.clear();  // A new attempt is a new run, never the one picked up.
          d.delay = *delay;
          return d;
        }
        e.progress[*index] = handler.on_failure == config::FailurePolicy::kDeadLetter
                                 ? Progress::kDeadLetter
                                 : Progress::kParked;
      }
    }
    bool pending = false, parked = false, dead_letter = false;
    for (auto& [i, p] : e.progress) {
      pending |= p == Progress::kPending;
      parked |= p == Progress::kParked;
      dead_letter |= p == Progress::kDeadLetter;
    }
    if (pending) {
      d.kind = Decision::Kind::kWait;
      return d;
    }
    d.error = e.last_error;
    bool explicit_completion = std::any_of(e.handlers.begin(), e.handlers.end(), [&](auto i) {
      return e.options->handlers[i].completion == config::Completion::kExplicit;
    });
    if (e.completed_by_request) {
      d.kind = Decision::Kind::kCompletedByRequest;
    } else if (dead_letter) {
      d.kind = Decision::Kind::kDeadLetter;
    } else if (parked) {
      d.kind = Decision::Kind::kPark;
    } else if (explicit_completion) {
      d.kind = Decision::Kind::kAwaitExplicit;
    } else {
      d.kind = Decision::Kind::kComplete;
    }
    entries_.erase(it);
  }
  dropped();
  return d;
}

bool InFlight::is_current(const Task& task) const {
  MutexLock lock(mutex_);
  auto it = entries_.find(key_of(task));
  if (it == entries_.end() || it->second.base.message_id != task.message_id) return false;
  const auto& e = it->second;
  for (auto i : e.handlers) {
    if (e.options->handlers[i].name == task.handler) {
      return e.progress.at(i) == Progress::kPending;
    }
  }
  return false;
}

bool InFlight::mark_completed(const ledger::MessageKey& key) {
  MutexLock lock(mutex_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return false;
  it->second.completed_by_request = true;
  return true;
}

std::optional<std::string> InFlight::message_id(const ledger::MessageKey& key) const {
  MutexLock lock(mutex_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return std::nullopt;
  return it->second.base.message_id;
}

bool InFlight::contains(const ledger::MessageKey& key) const {
  MutexLock lock(mutex_);
  return entries_.count(key) != 0;
}

void InFlight::drop(const ledger::MessageKey& key) {
  {
    MutexLock lock(mutex_);
    if (entries_.erase(key) == 0) return;
  }
  dropped();
}

std::size_t InFlight::size() const {
  MutexLock lock(mutex_);
  return entries_.size();
}

std::size_t InFlight::room() const {
  MutexLock lock(mutex_);
  return entries_.size() >= capacity_ ? 0 : capacity_ - entries_.size();
}

bool InFlight::wait_for_room(std::chrono::steady_clock::time_point deadline,
                             const std::function<bool()>& stop) {
  MutexLock lock(mutex_);
  while (entries_.size() >= capacity_ && !stop()) {
    if (room_.wait_until(lock, deadline) == std::cv_status::timeout) break;
  }
  return entries_.size() < capacity_;
}

void InFlight::on_room(std::function<void()> callback) {
  MutexLock lock(mutex_);
  on_room_ = std::move(callback);
}

void InFlight::notify() {
  { MutexLock lock(mutex_); }
  room_.notify_all();
}

void InFlight::dropped() {
  std::function<void()> callback;
  {
    MutexLock lock(mutex_);
    callback = on_room_;
  }
  room_.notify_all();
  if (callback) callback();
}

}  // namespace metro::dispatch
