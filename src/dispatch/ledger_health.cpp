#include "ledger_health.hpp"

#include <spdlog/spdlog.h>

#include "naming.hpp"

namespace metro::dispatch {

void LedgerHealth::failed(const std::string& why) {
  bool first = false;
  {
    MutexLock lock(mutex_);
    first = !problem_;
    problem_ = log_value(why, 512);
    last_failure_ = Clock::now();
  }
  if (first) {
    spdlog::error("ledger: cannot be written ({}); metro stops taking messages until it can",
                  log_value(why, 512));
  }
  changed_.notify_all();
}

void LedgerHealth::succeeded() {
  std::function<void()> callback;
  {
    MutexLock lock(mutex_);
    last_success_ = Clock::now();
    if (!problem_) return;
    problem_.reset();
    callback = on_recovered_;
  }
  spdlog::warn("ledger: can be written again; metro takes messages again");
  changed_.notify_all();
  if (callback) callback();
}

std::optional<std::string> LedgerHealth::problem() const {
  MutexLock lock(mutex_);
  return problem_;
}

LedgerHealth::Clock::time_point LedgerHealth::last_success() const {
  MutexLock lock(mutex_);
  return last_success_;
}

bool LedgerHealth::failed_within(std::chrono::milliseconds d) const {
  MutexLock lock(mutex_);
  return problem_ || (last_failure_ && Clock::now() - *last_failure_ < d);
}

bool LedgerHealth::wait_until_ok(Clock::time_point deadline, const std::function<bool()>& stop) {
  MutexLock lock(mutex_);
  while (problem_ && !stop()) {
    if (changed_.wait_until(lock, deadline) == std::cv_status::timeout) break;
  }
  return !problem_;
}

bool LedgerHealth::wait_until_failed(Clock::time_point deadline,
                                     const std::function<bool()>& stop) {
  MutexLock lock(mutex_);
  while (!problem_ && !stop()) {
    if (changed_.wait_until(lock, deadline) == std::cv_status::timeout) break;
  }
  return problem_.has_value();
}

void LedgerHealth::notify() {
  { MutexLock lock(mutex_); }
  changed_.notify_all();
}

void LedgerHealth::on_recovered(std::function<void()> callback) {
  MutexLock lock(mutex_);
  on_recovered_ = std::move(callback);
}

}  // namespace metro::dispatch
