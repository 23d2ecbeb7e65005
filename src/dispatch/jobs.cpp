#include "jobs.hpp"

#include <algorithm>
#include <random>

#include <spdlog/spdlog.h>

#include "../common/audit.hpp"
#include "naming.hpp"

namespace metro::dispatch {

using ledger::JobAction;
using ledger::JobState;
using SteadyClock = std::chrono::steady_clock;

namespace {

constexpr std::chrono::milliseconds kRoomPoll{20};  // How often a retry looks for room.
constexpr std::chrono::seconds kIdle{5};            // Looks at the ledger at least this often.

constexpr std::chrono::milliseconds kSettleSlice{100};  // How often a settle wait looks for a stop.

/// Waits for a settlement's confirmation until `deadline`, in slices so that a stop is seen
/// within one; after a stop, only looks whether it is confirmed. `timeout` when it is not.
std::future_status await_settled(const std::future<void>& settled, SteadyClock::time_point deadline,
                                 const std::stop_token& stop) {
  while (true) {
    const auto now = SteadyClock::now();
    const auto until = stop.stop_requested() ? now : std::min(now + kSettleSlice, deadline);
    // `deferred` (a lazily run future) is as good as ready: its get() runs it.
    auto status = settled.wait_until(until);
    if (status != std::future_status::timeout || stop.stop_requested() ||
        SteadyClock::now() >= deadline) {
      return status;
    }
  }
}

std::string outcome_text(const ledger::Job& j) {
  return std::string(to_string(j.state)) + ": " + std::to_string(j.done) + " done, " +
         std::to_string(j.failed) + " failed of " + std::to_string(j.total);
}

}  // namespace

std::string new_job_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  constexpr std::string_view kHex = "0123456789abcdef";
  auto bits = rng();
  std::string id;
  for (int i = 0; i < 16; ++i, bits >>= 4) id += kHex[bits & 15];
  return id;
}

void JobRunner::start() {
  if (thread_.joinable()) return;
  thread_ = std::jthread([this](std::stop_token stop) { loop(stop); });
}

void JobRunner::stop() {
  if (!thread_.joinable()) return;
  thread_.request_stop();
  { MutexLock lock(mutex_); }
  wake_.notify_all();
  thread_.join();
}

void JobRunner::wake() {
  {
    MutexLock lock(mutex_);
    woken_ = true;
  }
  wake_.notify_all();
}

bool JobRunner::cancel(const std::string& id, const std::string& who) {
  if (!ledger_.set_job_state(id, JobState::kCancelled, "cancelled by " + who)) return false;
  {
    MutexLock lock(mutex_);
    cancelled_.insert(id);
  }
  wake_.notify_all();
  return true;
}

bool JobRunner::cancelled(const std::string& id) {
  MutexLock lock(mutex_);
  return cancelled_.count(id) != 0;
}

bool JobRunner::pause(SteadyClock::time_point until, const std::stop_token& stop,
                      const std::string& id) {
  MutexLock lock(mutex_);
  wake_.wait_until(lock, stop, until, [&]() REQUIRES(mutex_) { return cancelled_.count(id) != 0; });
  return !stop.stop_requested() && cancelled_.count(id) == 0;
}

void JobRunner::loop(const std::stop_token& stop) {
  while (!stop.stop_requested()) {
    std::vector<ledger::Job> unfinished;
    try {
      unfinished = ledger_.jobs(1, true);
    } catch (const Error& e) {
      spdlog::error("jobs: cannot read the ledger: {}", log_value(e.what()));
    }
    if (!unfinished.empty()) {
      try {
        // One instance at a time runs the jobs of a shared ledger (the others look again every
        // kIdle, and take over when the one running them stops or dies).
        auto alone = ledger_.try_exclusive("bulk-jobs");
        if (alone) {
          run(unfinished.front(), stop);
          continue;
        }
      } catch (const std::exception& e) {
        // The ledger cannot be read or written now: the job goes on once it can.
        spdlog::error("job {}: {}; trying again in {} s", unfinished.front().id,
                      log_value(e.what()), kIdle.count());
      }
    }
    MutexLock lock(mutex_);
    wake_.wait_for(lock, stop, kIdle, [this]() REQUIRES(mutex_) { return woken_; });
    woken_ = false;
  }
}

void JobRunner::run(ledger::Job job, const std::stop_token& stop) {
  const auto& id = job.id;
  const auto action = std::string(to_string(job.action));
  if (job.state == JobState::kQueued) {
    ledger_.set_job_state(id, JobState::kRunning);
    spdlog::info("job {}: {} of {} message(s) started", id, action, job.total);
  } else {
    spdlog::info("job {}: {} goes on ({} of {} done)", id, action, job.done + job.failed,
                 job.total);
  }
  // Paced: one message every 1/rate seconds, never faster after a pause.
  const auto interval = std::chrono::duration_cast<SteadyClock::duration>(
      std::chrono::duration<double>(1.0 / std::max(limits_.rate, 0.001)));
  auto next = SteadyClock::now();
  // About a second's worth at a time, so that progress shows (a batch is recorded when its
  // settlements are confirmed).
  const auto batch =
      std::clamp<std::size_t>(static_cast<std::size_t>(limits_.rate), 1, limits_.batch);
  while (true) {
    if (stop.stop_requested()) return;  // Stays running: resumed at the next start.
    auto now_job = ledger_.find_job(id);
    if (!now_job || cancelled(id) || now_job->state == JobState::kCancelled) {
      if (now_job) audit::job_line(job.created_by, action, id, job.filter, outcome_text(*now_job));
      spdlog::info("job {}: cancelled", id);
      return;
    }
    auto keys = ledger_.job_pending(id, batch);
    if (keys.empty()) {
      ledger_.set_job_state(id, JobState::kCompleted);
      auto done = ledger_.find_job(id).value_or(job);
      audit::job_line(job.created_by, action, id, job.filter, outcome_text(done));
      spdlog::info("job {}: {}", id, outcome_text(done));
      return;
    }
    std::vector<ledger::JobItem> items;
    std::vector<std::future<void>> settling;
    for (const auto& key : keys) {
      if (!pause(next, stop, id)) break;
      if (job.action == JobAction::kRetry) {
        // Only while the messages in hand leave the listener its half of the room.
        bool room = false;
        while (!(room = actions_.room_for_retry())) {
          if (!pause(SteadyClock::now() + kRoomPoll, stop, id)) break;
        }
        if (!room) break;
      }
      next = std::max(next + interval, SteadyClock::now() - interval);
      ledger::JobItem item{key, true, {}};
      try {
        switch (job.action) {
          case JobAction::kRetry:
            actions_.retry(key);
            break;
          case JobAction::kComplete:
            settling.push_back(actions_.complete(key));
            break;
          case JobAction::kDeadLetter:
            settling.push_back(actions_.dead_letter(key, job.reason, job.description));
            break;
        }
      } catch (const std::exception& e) {
        item.ok = false;
        item.error = e.what();
        if (job.action != JobAction::kRetry) settling.emplace_back();  // Keeps the indices.
      }
      items.push_back(std::move(item));
    }
    // Settlements are batched by the settler; wait for this batch's confirmations. A stop ends
    // the wait: what is unconfirmed then is not recorded, so it is acted on again after the
    // restart (a message completed or dead-lettered already counts as done then).
    const auto deadline = SteadyClock::now() + limits_.settle_wait;
    std::vector<ledger::JobItem> outcomes;
    outcomes.reserve(items.size());
    for (std::size_t i = 0; i < items.size(); ++i) {
      auto& item = items[i];
      // A retry has no future; a complete or dead-letter that threw has an invalid one (its error
      // is in the item already).
      if (i < settling.size() && settling[i].valid()) {
        auto status = await_settled(settling[i], deadline, stop);
        if (status == std::future_status::timeout && stop.stop_requested()) continue;
        if (status == std::future_status::timeout) {
          item.ok = false;
          item.error = "Service Bus did not confirm it in time; it may still be settled";
        } else {
          try {
            settling[i].get();
          } catch (const std::exception& e) {
            item.ok = false;
            item.error = e.what();
          }
        }
      }
      outcomes.push_back(std::move(item));
    }
    items = std::move(outcomes);
    if (items.empty()) continue;  // Stopped or cancelled before the first: looked at above.
    try {
      ledger_.record_job_items(id, items);
    } catch (const Error& e) {
      // Not recorded: acted on again after a restart (each action is harmless twice).
      spdlog::error("job {}: cannot record outcomes: {}", id, log_value(e.what()));
    }
    for (const auto& item : items) {
      audit::line(job.created_by, action, name_of(item.key),
                  item.ok ? std::string("ok") : "error: " + item.error, id);
    }
  }
}

}  // namespace metro::dispatch
