#include "held.hpp"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "../common/fresh_exception.hpp"
#include "intake.hpp"
#include "naming.hpp"

namespace metro::dispatch {

using ledger::MessageKey;
using ledger::State;
using std::chrono::milliseconds;
using SysClock = std::chrono::system_clock;

namespace {

// How long a listener waits for Service Bus to confirm deferrals, and `stop` for completions.
constexpr std::chrono::seconds kConfirmWait{30};
// A deferral the ledger refused is tried again this much later (the lock is renewed meanwhile).
constexpr milliseconds kLedgerRetry{1000};
// While completions wait for confirmation, the thread looks at its timers at least this often.
constexpr milliseconds kCollectEvery{50};
// A message whose lock was lost is remembered this long, so that what its runs report is dropped.
constexpr std::chrono::minutes kGoneLinger{10};
// When the lock's duration is unknown: a quarter of Service Bus's default minute.
constexpr milliseconds kDefaultDeferAfter{15000};
constexpr milliseconds kMaxDeferAfter{std::chrono::minutes(4)};
// Callers waiting for a deferral under way look again at least this often.
constexpr milliseconds kLookAgain{1000};

}  // namespace

milliseconds defer_after(const config::SubscriptionOptions& options,
                         const sb::ReceivedMessage& message, SysClock::time_point now) {
  if (options.defer_after) return *options.defer_after;
  if (!message.locked_until || *message.locked_until <= now) return kDefaultDeferAfter;
  auto lock = std::chrono::duration_cast<milliseconds>(*message.locked_until - now);
  return std::clamp(lock / 4, milliseconds(1), kMaxDeferAfter);
}

void Held::start() {
  MutexLock lock(mutex_);
  if (thread_.joinable() || stopping_) return;
  thread_ = std::thread([this] { loop(); });
}

void Held::give_back(Route& route, const sb::ReceivedMessage& message) {
  try {
    (void)route.receiver->abandon_async(message);
  } catch (const Error&) {
    // Its lock lapses on its own and it is delivered again.
  }
}

Held::Hold Held::hold(Route& route, sb::ReceivedMessage message, const Task& base,
                      SysClock::time_point enqueued, Clock::time_point defer_at) {
  auto key = key_of(base);
  {
    MutexLock lock(mutex_);
    auto it = entries_.find(key);
    if (!stopping_ && it != entries_.end() && it->second.stage == Stage::kLocked) {
      if (it->second.base.message_id == base.message_id) {
        // Delivered again while its handlers run (the lock had lapsed): settle with the new lock.
        it->second.message = std::move(message);
        return Hold::kRefreshed;
      }
      // An earlier message with this number (the numbers started again) is gone from Service Bus.
      entries_.erase(it);
      it = entries_.end();
    }
    if (!stopping_ && (it == entries_.end() || it->second.stage == Stage::kGone ||
                       it->second.stage == Stage::kSettled)) {
      if (it != entries_.end()) entries_.erase(it);
      Entry e;
      e.route = &route;
      e.message = std::move(message);
      e.base = base;
      e.enqueued = enqueued;
      e.defer_at = defer_at;
      entries_.emplace(key, std::move(e));
      // The thread looks at its timers again by `wake_at_`: wake it only for a sooner one.
      if (defer_at < wake_at_) changed_.notify_all();
      return Hold::kHeld;
    }
  }
  give_back(route, message);
  return Hold::kRefused;
}

bool Held::keep_run(const MessageKey& key, const std::string& message_id,
                    const ledger::HandlerRun& run) {
  MutexLock lock(mutex_);
  while (true) {
    auto it = entries_.find(key);
    if (it == entries_.end()) return false;
    auto& e = it->second;
    // A run of an earlier message with this number: that message is gone from Service Bus.
    if (e.base.message_id != message_id) return true;
    switch (e.stage) {
      case Stage::kGone:
        return true;  // Nothing to write: it is delivered again.
      case Stage::kSettled:
        return true;  // Completed on its link: it has no row to write to.
      case Stage::kDeferring:
        // A deferral waits at most kConfirmWait for Service Bus; look again now and then.
        changed_.wait_for(lock, kLookAgain);
        continue;
      case Stage::kLocked: {
        auto same = std::find_if(e.runs.begin(), e.runs.end(), [&](const ledger::HandlerRun& r) {
          return r.handler == run.handler && r.attempt == run.attempt;
        });
        if (same == e.runs.end()) {
          e.runs.push_back(run);
        } else {
          *same = run;
        }
        return true;
      }
    }
  }
}

Held::Deferral Held::defer(const MessageKey& key, const std::string& message_id,
                           const std::function<bool()>& stopping) {
  for (bool refused = false;; refused = true) {
    Route* route = nullptr;
    {
      MutexLock lock(mutex_);
      auto it = entries_.find(key);
      if (it == entries_.end()) return Deferral::kNotHeld;
      auto& e = it->second;
      if (e.base.message_id != message_id) return Deferral::kSuperseded;
      if (e.stage == Stage::kGone || e.stage == Stage::kSettled) return Deferral::kGone;
      if (e.stage == Stage::kDeferring) {
        changed_.wait_for(lock, kLookAgain);
        continue;
      }
      if (refused && stopping()) {
        // The ledger refused it and metro is stopping: back to Service Bus, unrecorded.
        give_back(*e.route, e.message);
        e.stage = Stage::kGone;
        e.gone_at = Clock::now();
        changed_.notify_all();
        return Deferral::kGone;
      }
      e.stage = Stage::kDeferring;
      route = e.route;
    }
    if (defer_batch(*route, {key}) == Batch::kDone) {
      MutexLock lock(mutex_);
      auto it = entries_.find(key);
      return it == entries_.end() ? Deferral::kDeferred : Deferral::kGone;
    }
    // The ledger cannot be written: the message is held again; wait until it can, then retry.
    health_.wait_until_ok(LedgerHealth::Clock::now() + kLedgerRetry, stopping);
  }
}

std::optional<std::future<void>> Held::complete(const MessageKey& key) {
  auto done = std::make_shared<std::promise<void>>();
  auto future = done->get_future();
  MutexLock lock(mutex_);
  while (true) {
    auto it = entries_.find(key);
    if (it == entries_.end()) return std::nullopt;
    auto& e = it->second;
    if (e.stage == Stage::kDeferring) {
      changed_.wait_for(lock, kLookAgain);
      continue;
    }
    if (e.stage == Stage::kSettled) {
      done->set_value();  // Its completion on the link is under way already.
      return future;
    }
    if (e.stage == Stage::kGone) {
      done->set_exception(fresh_exception([&] {
        return ConflictError(name_of(key, e.base.correlation_id) +
                             " lost its lock before it was completed; it is delivered again");
      }));
      return future;
    }
    std::future<void> confirmed;
    try {
      confirmed = e.route->receiver->complete_async(e.message);
    } catch (const Error& error) {
      // The client is closed: the message's lock lapses and it is delivered again.
      done->set_exception(fresh_exception([&] {
        return ConflictError(name_of(key, e.base.correlation_id) +
                             " cannot be completed on its link: " + error.what());
      }));
      e.stage = Stage::kGone;
      e.gone_at = Clock::now();
      changed_.notify_all();
      return future;
    }
    settling_.push_back({key, e.base.correlation_id, std::move(confirmed), done});
    // Kept (without its body) until its runs have ended, so that what those still going report
    // is dropped, not written.
    e.stage = Stage::kSettled;
    e.gone_at = Clock::now();
    e.runs.clear();
    e.message = {};
    e.base.body.clear();
    if (settling_.size() == 1) changed_.notify_all();
    return future;
  }
}

void Held::ended(const MessageKey& key, const std::string& message_id) {
  MutexLock lock(mutex_);
  auto it = entries_.find(key);
  if (it != entries_.end() && it->second.stage == Stage::kSettled &&
      it->second.base.message_id == message_id) {
    entries_.erase(it);
  }
}

std::size_t Held::size() const {
  MutexLock lock(mutex_);
  return entries_.size();
}

void Held::collect() {
  std::vector<Settling> done;
  {
    MutexLock lock(mutex_);
    while (!settling_.empty() &&
           settling_.front().confirmed.wait_for(milliseconds(0)) == std::future_status::ready) {
      done.push_back(std::move(settling_.front()));
      settling_.pop_front();
    }
  }
  for (auto& s : done) confirm(s);
}

void Held::confirm(Settling& s) {
  try {
    s.confirmed.get();
    ++counters_.completed;
    spdlog::debug("{}: completed on its link", name_of(s.key, s.correlation));
    s.done->set_value();
  } catch (const std::exception& e) {
    spdlog::warn("{}: completing it on its link failed ({}); it is delivered again",
                 name_of(s.key, s.correlation), log_value(e.what()));
    s.done->set_exception(fresh_exception([&] {
      return ConflictError(name_of(s.key, s.correlation) + " was not completed: " +
                           std::string(e.what()) + "; it is delivered again");
    }));
  }
}

Held::Batch Held::defer_batch(Route& route, const std::vector<MessageKey>& keys) {
  // The entries stay put while they are deferring: only this call changes them.
  std::vector<ledger::DeferredMessage> rows;
  std::vector<const sb::ReceivedMessage*> messages;
  std::vector<std::string> names;
  {
    MutexLock lock(mutex_);
    for (const auto& key : keys) {
      const auto& e = entries_.at(key);
      rows.push_back(row_of(e.base, e.enqueued, State::kDeferring, body_limit_));
      messages.push_back(&e.message);
      names.push_back(name_of(key, e.base.correlation_id));
    }
  }
  try {
    ledger_.record_all(rows);
    health_.succeeded();
  } catch (const Error& e) {
    health_.failed(e.what());
    spdlog::warn("{}: holding {} slow message(s) until the ledger can be written: {}",
                 route.options.entity_path(), keys.size(), log_value(e.what()));
    MutexLock lock(mutex_);
    for (const auto& key : keys) {
      auto& entry = entries_.at(key);
      entry.stage = Stage::kLocked;
      entry.defer_at = Clock::now() + kLedgerRetry;
    }
    changed_.notify_all();
    return Batch::kLedgerUnwritable;
  }
  std::vector<std::future<void>> deferrals;
  for (const auto* m : messages) {
    try {
      deferrals.push_back(route.receiver->defer_async(*m));
    } catch (const Error& e) {
      std::promise<void> failed;
      failed.set_exception(fresh_exception([&] { return Error(e.what()); }));
      deferrals.push_back(failed.get_future());
    }
  }
  auto errors = wait_all(deferrals, Clock::now() + kConfirmWait);
  std::vector<MessageKey> deferred;
  std::vector<MessageKey> gone;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (errors[i].empty()) {
      deferred.push_back(keys[i]);
      continue;
    }
    gone.push_back(keys[i]);
    if (errors[i].rfind("lock lost", 0) == 0) {
      spdlog::info("{}: lock lost before it was deferred; it will be delivered again", names[i]);
      try {
        ledger_.forget(keys[i]);
      } catch (const Error& e) {
        spdlog::warn("ledger: cannot drop {}: {}", names[i], log_value(e.what()));
      }
    } else {
      // Whether it was deferred is unknown: its row stays `deferring` and the reaper resolves
      // it by peeking (resuming it if it was).
      spdlog::warn("{}: deferring failed ({}); will be resolved by peeking", names[i],
                   log_value(errors[i]));
    }
  }
  counters_.deferred += deferred.size();
  // The runs so far; the state says whether a run is under way.
  std::vector<std::pair<MessageKey, std::vector<ledger::HandlerRun>>> runs;
  {
    MutexLock lock(mutex_);
    for (const auto& key : deferred) runs.emplace_back(key, entries_.at(key).runs);
  }
  std::vector<MessageKey> running;
  std::vector<MessageKey> waiting;
  try {
    for (const auto& [key, list] : runs) {
      bool under_way = false;
      for (const auto& run : list) {
        ledger_.record_run(key, run);
        under_way = under_way || !run.finished;
      }
      (under_way ? running : waiting).push_back(key);
    }
    if (!running.empty()) ledger_.set_state_all(running, State::kRunning);
    if (!waiting.empty()) ledger_.set_state_all(waiting, State::kDeferred);
    health_.succeeded();
  } catch (const Error& e) {
    // Deferred and recorded as `deferring`: the reaper resolves it, as after a crash.
    health_.failed(e.what());
    spdlog::error("ledger: cannot record the runs of {} deferred message(s): {}", runs.size(),
                  log_value(e.what()));
  }
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (errors[i].empty()) {
      spdlog::debug("{}: deferred (still being handled at defer_after)", names[i]);
    }
  }
  {
    MutexLock lock(mutex_);
    for (const auto& key : deferred) entries_.erase(key);
    for (const auto& key : gone) {
      auto& entry = entries_.at(key);
      entry.stage = Stage::kGone;
      entry.gone_at = Clock::now();
    }
  }
  changed_.notify_all();
  for (const auto& key : gone) in_flight_.drop(key);
  return Batch::kDone;
}

void Held::loop() {
  MutexLock lock(mutex_);
  while (!stopping_) {
    auto now = Clock::now();
    std::map<Route*, std::vector<MessageKey>> due;
    auto next = Clock::time_point::max();
    for (auto it = entries_.begin(); it != entries_.end();) {
      auto& e = it->second;
      bool over = e.stage == Stage::kGone || e.stage == Stage::kSettled;
      if (over && now - e.gone_at > kGoneLinger) {
        it = entries_.erase(it);
        continue;
      }
      if (e.stage == Stage::kLocked) {
        if (e.defer_at <= now) {
          e.stage = Stage::kDeferring;
          due[e.route].push_back(it->first);
        } else {
          next = std::min(next, e.defer_at);
        }
      }
      ++it;
    }
    if (!due.empty()) {
      lock.unlock();
      for (auto& [route, keys] : due) (void)defer_batch(*route, keys);
      lock.lock();
      continue;
    }
    if (!settling_.empty()) {
      // Only this thread takes from the queue (others append), so the front stays put while it
      // is waited for without the lock. The wait is short so that deferrals come in time.
      auto& front = settling_.front().confirmed;
      auto until = std::min(next, now + kCollectEvery);
      wake_at_ = until;
      lock.unlock();
      bool ready = front.wait_until(until) == std::future_status::ready;
      if (ready) collect();
      lock.lock();
      continue;
    }
    wake_at_ = std::min(next, Clock::now() + std::chrono::minutes(1));
    changed_.wait_until(lock, wake_at_);
  }
}

void Held::stop() {
  {
    MutexLock lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
  // What is still held goes back to Service Bus (its handlers did not finish); what was
  // completed is waited for.
  std::vector<std::future<void>> returns;
  std::vector<std::string> names;
  std::deque<Settling> settling;
  {
    MutexLock lock(mutex_);
    for (auto& [key, e] : entries_) {
      if (e.stage != Stage::kLocked) continue;
      try {
        returns.push_back(e.route->receiver->abandon_async(e.message));
        names.push_back(name_of(key, e.base.correlation_id));
      } catch (const Error&) {
        // Its lock lapses on its own.
      }
    }
    entries_.clear();
    settling.swap(settling_);
  }
  if (!returns.empty()) {
    spdlog::info("{} message(s) received and not handled are given back", returns.size());
  }
  (void)wait_all(returns, Clock::now() + kConfirmWait);
  auto deadline = Clock::now() + kConfirmWait;
  for (auto& s : settling) {
    if (s.confirmed.wait_until(deadline) != std::future_status::ready) {
      spdlog::warn("{}: its completion was not confirmed in time; it may be delivered again",
                   name_of(s.key, s.correlation));
      s.done->set_exception(fresh_exception([&] {
        return ConflictError(name_of(s.key, s.correlation) + " was not confirmed completed");
      }));
      continue;
    }
    confirm(s);
  }
}

}  // namespace metro::dispatch
