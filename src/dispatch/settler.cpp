#include "settler.hpp"

#include <algorithm>
#include <map>

#include <spdlog/spdlog.h>

#include "../common/fresh_exception.hpp"
#include "naming.hpp"

namespace metro::dispatch {

using ledger::State;

namespace {

constexpr std::size_t kSettleChunk = 100;  // Sequence numbers in one settlement request.
// How long a settlement waits for others to share its requests and its ledger write. Under load
// they queue up while the settler works, and nothing waits.
constexpr std::chrono::milliseconds kGather{10};

// A settlement that failed for a passing reason is tried again, 1 s, 2 s, 4 s … 15 s apart: for
// over two minutes, longer than a lock lasts (a lock held by a dead receiver must expire first).
constexpr int kSettleAttempts = 12;
std::chrono::milliseconds settle_backoff(int attempts) {
  return std::chrono::seconds(std::min(15, 1 << std::min(attempts - 1, 4)));
}

}  // namespace

void Settler::start() {
  MutexLock lock(mutex_);
  if (thread_.joinable() || gone_) return;
  thread_ = std::thread([this] { loop(); });
}

std::future<void> Settler::enqueue(Route& route, const ledger::MessageKey& key,
                                   sb::Disposition disposition, std::string reason,
                                   std::string description, std::string correlation,
                                   DeadLetterCause cause) {
  auto done = std::make_shared<std::promise<void>>();
  auto future = done->get_future();
  bool wake = false;
  {
    MutexLock lock(mutex_);
    if (gone_ || stopping_) {
      done->set_exception(fresh_exception([&] {
        return ConflictError("metro is shutting down; " + name_of(key, correlation) +
                             " stays deferred and is settled after the next start");
      }));
      return future;
    }
    items_.push_back({&route,
                      key,
                      disposition,
                      std::move(reason),
                      std::move(description),
                      std::move(correlation),
                      cause,
                      done,
                      0,
                      {},
                      std::chrono::steady_clock::now()});
    // Woken once: when it sleeps with nothing due, or when a full request is gathered.
    wake = idle_ || (gathering_ && items_.size() == kSettleChunk);
    if (wake) idle_ = gathering_ = false;
  }
  if (wake) wake_.notify_one();
  return future;
}

void Settler::stop() {
  {
    MutexLock lock(mutex_);
    stopping_ = true;
    if (!thread_.joinable()) gone_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  // Anything queued after the loop ended (none can be: enqueue refuses once stopping).
}

void Settler::loop() {
  MutexLock lock(mutex_);
  while (true) {
    if (!unrecorded_.empty() && std::chrono::steady_clock::now() >= record_at_) {
      lock.unlock();
      record_pending(false);
      lock.lock();
    }
    if (items_.empty()) {
      if (stopping_) break;  // Everything is settled.
      idle_ = true;
      if (unrecorded_.empty()) {
        wake_.wait(lock);
      } else {
        wake_.wait_until(lock, record_at_);
      }
      idle_ = false;
      continue;
    }
    // Retries wait for their time, except when stopping (then they get one last try). New
    // settlements wait (kGather) for others to share a request, unless a request is full.
    auto now = std::chrono::steady_clock::now();
    auto next = std::chrono::steady_clock::time_point::max();
    std::size_t due_now = 0;
    bool ready = stopping_;
    for (const auto& item : items_) {
      if (item.not_before > now) {
        next = std::min(next, item.not_before);
        continue;
      }
      ++due_now;
      ready = ready || item.attempts > 0 || item.queued + kGather <= now;
      next = std::min(next, item.queued + kGather);
    }
    ready = ready || due_now >= kSettleChunk;
    if (!ready) {
      if (!unrecorded_.empty()) next = std::min(next, record_at_);
      idle_ = due_now == 0;
      gathering_ = due_now > 0;
      wake_.wait_until(lock, next);
      idle_ = gathering_ = false;
      continue;
    }
    std::deque<Item> due;
    std::deque<Item> later;
    for (auto& item : items_) {
      if (stopping_ || item.not_before <= now) {
        due.push_back(std::move(item));
      } else {
        later.push_back(std::move(item));
      }
    }
    items_ = std::move(later);
    lock.unlock();
    settle_batch(due);
    lock.lock();
  }
  lock.unlock();
  if (!record_pending(true)) {
    spdlog::warn("ledger: settlements Service Bus confirmed are not recorded (the ledger cannot "
                 "be written); the next start finds them settled and records them");
  }
  lock.lock();
  gone_ = true;
}

void Settler::record(Unrecorded outcome) {
  try {
    ledger_.set_state_all(outcome.keys, outcome.state, outcome.note);
    health_.succeeded();
  } catch (const Error& e) {
    health_.failed(e.what());
    spdlog::warn("ledger: cannot record {} settled message(s) yet ({}); trying again",
                 outcome.keys.size(), log_value(e.what()));
    MutexLock lock(mutex_);
    if (unrecorded_.empty()) {
      record_backoff_ = std::chrono::milliseconds(500);
      record_at_ = std::chrono::steady_clock::now() + record_backoff_;
    }
    unrecorded_.push_back(std::move(outcome));
  }
}

bool Settler::record_pending(bool force) {
  while (true) {
    Unrecorded next;
    {
      MutexLock lock(mutex_);
      if (unrecorded_.empty()) return true;
      if (!force && std::chrono::steady_clock::now() < record_at_) return false;
      next = std::move(unrecorded_.front());
      unrecorded_.pop_front();
    }
    try {
      ledger_.set_state_all(next.keys, next.state, next.note);
      health_.succeeded();
    } catch (const Error& e) {
      health_.failed(e.what());
      MutexLock lock(mutex_);
      unrecorded_.push_front(std::move(next));
      record_backoff_ = std::min<std::chrono::milliseconds>(std::chrono::seconds(10),
                                                            record_backoff_ * 2);
      record_at_ = std::chrono::steady_clock::now() + record_backoff_;
      return false;
    }
  }
}

void Settler::settle_batch(std::deque<Item>& batch) {
  // Completions per subscription in chunks (one receive-by-sequence-number and one
  // update-disposition per chunk); dead-letters one by one, as each has its own reason.
  std::map<Route*, std::vector<Item*>> completions;
  for (auto& s : batch) {
    if (s.disposition == sb::Disposition::kComplete) {
      completions[s.route].push_back(&s);
    } else {
      settle_chunk(*s.route, {&s});
    }
  }
  for (auto& [route, items] : completions) {
    for (std::size_t i = 0; i < items.size(); i += kSettleChunk) {
      std::vector<Item*> chunk(
          items.begin() + static_cast<std::ptrdiff_t>(i),
          items.begin() + static_cast<std::ptrdiff_t>(std::min(items.size(), i + kSettleChunk)));
      settle_chunk(*route, chunk);
    }
  }
}

void Settler::settle_chunk(Route& route, const std::vector<Item*>& items) {
  auto& receiver = *route.receiver;
  const auto& first = *items.front();
  std::vector<std::int64_t> numbers;
  for (auto* s : items) {
    if (std::find(numbers.begin(), numbers.end(), s->key.sequence_number) == numbers.end()) {
      numbers.push_back(s->key.sequence_number);
    }
  }
  std::exception_ptr failure;
  bool gone = false;
  bool locked_elsewhere = false;
  try {
    auto messages = receiver.receive_deferred(numbers);
    receiver.settle_deferred(messages, first.disposition, first.reason, first.description);
  } catch (const sb::NotFoundError&) {
    if (numbers.size() > 1) {
      for (auto* s : items) settle_chunk(route, {s});  // Find the one that is not there.
      return;
    }
    gone = true;
  } catch (const Error&) {
    failure = std::current_exception();
  }
  if (gone && still_deferred(route, numbers.front())) {
    // Fetched by sequence number by someone else, e.g. a metro that died before settling it:
    // its lock has to expire first.
    locked_elsewhere = true;
    failure = fresh_exception([&] {
      return ConflictError(name_of(first.key, first.correlation) +
                           " is locked by another receiver right now; try again later");
    });
  }
  if (failure) {
    bool again = locked_elsewhere;
    std::string why;
    try {
      std::rethrow_exception(failure);
    } catch (const sb::LockLostError& e) {
      again = true;  // Fetching it by sequence number again gives a fresh lock.
      why = e.what();
    } catch (const Error& e) {
      again = again || e.is_transient();
      why = e.what();
    }
    MutexLock lock(mutex_);
    for (auto* s : items) {
      if (again && s->attempts + 1 < kSettleAttempts && !stopping_) {
        Item retry = *s;
        ++retry.attempts;
        retry.not_before = std::chrono::steady_clock::now() + settle_backoff(retry.attempts);
        spdlog::debug("{}: settling failed ({}); trying again", name_of(s->key, s->correlation),
                      log_value(why));
        items_.push_back(std::move(retry));
      } else {
        spdlog::warn(
            "{}: settling failed, it stays deferred (the reaper tries again after "
            "deferred_deadline, or retry it): {}",
            name_of(s->key, s->correlation), log_value(why));
        s->done->set_exception(failure);
      }
    }
    return;
  }
  std::vector<ledger::MessageKey> keys;
  for (auto* s : items) keys.push_back(s->key);
  auto state =
      first.disposition == sb::Disposition::kComplete ? State::kCompleted : State::kDeadLettered;
  for (auto* s : items) {
    if (state == State::kCompleted) {
      spdlog::debug("{}: completed{}", name_of(s->key, s->correlation),
                    gone ? " (it had been settled before)" : "");
    } else {
      spdlog::warn("{}: dead-lettered ({}){}: {}", name_of(s->key, s->correlation),
                   log_value(s->reason), gone ? " (it had been settled before)" : "",
                   log_value(s->description));
    }
  }
  if (!gone) {
    if (state == State::kCompleted) {
      counters_.completed += numbers.size();
    } else {
      counters_.dead_letter(first.cause, numbers.size());
    }
  }
  record({std::move(keys), state,
          gone ? "was no longer in the subscription (settled before)" : std::string()});
  for (auto* s : items) s->done->set_value();
}

bool Settler::still_deferred(Route& route, std::int64_t sequence_number) {
  try {
    auto peeked = route.receiver->peek(sequence_number, 1);
    return !peeked.empty() && peeked.front().sequence_number == sequence_number;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace metro::dispatch
