#include "listener.hpp"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "naming.hpp"

namespace metro::dispatch {

namespace {

constexpr std::size_t kMaxReceive = 100;  // Messages taken from one subscription at once (default).
constexpr std::chrono::milliseconds kReceiveWait{500};
constexpr std::chrono::milliseconds kProbeFirst{250};  // The ledger watcher's backoff.
constexpr std::chrono::milliseconds kProbeMax{std::chrono::seconds(10)};
constexpr std::chrono::seconds kStopWait{90};  // For batches in hand (their waits are bounded).

std::size_t receive_limit(const Route& route) {
  return route.options.prefetch > 0 ? static_cast<std::size_t>(route.options.prefetch)
                                    : kMaxReceive;
}

}  // namespace

void give_back(sb::Receiver& receiver, const sb::ReceivedMessage& m) {
  try {
    (void)receiver.abandon_async(m);
  } catch (const Error&) {
    // Its lock lapses on its own and it is delivered again.
  }
}

void Listener::start() {
  {
    MutexLock lock(mutex_);
    if (started_ || stopping_) return;
    started_ = true;
  }
  pool_ = std::make_unique<WorkerPool>(std::clamp<std::size_t>(routes_.size(), 1, 4));
  watcher_ = std::jthread([this](std::stop_token stop) { watch_ledger(stop); });
  for (const auto& route : routes_) arm(*route);
}

void Listener::arm(Route& route) {
  std::size_t want = 0;
  {
    MutexLock lock(mutex_);
    auto& slot = slots_[route.index];
    auto room = in_flight_.room();
    slot.busy = !stopping_ && room > 0 && health_.ok();
    slot.waiting = !stopping_ && !slot.busy;
    if (!slot.busy) {
      changed_.notify_all();
      return;
    }
    want = std::min(room, receive_limit(route));
  }
  try {
    route.receiver->receive_async(want, kReceiveWait,
                                  [this, r = &route](std::vector<sb::ReceivedMessage> messages) {
                                    received(*r, std::move(messages));
                                  });
  } catch (const Error& e) {
    spdlog::error("{}: cannot receive: {}", route.options.entity_path(), log_value(e.what()));
    idle(route);
  }
}

void Listener::received(Route& route, std::vector<sb::ReceivedMessage> messages) {
  auto batch = std::make_shared<std::vector<sb::ReceivedMessage>>(std::move(messages));
  bool queued = pool_->submit([this, r = &route, batch] { listen_once(*r, *batch); });
  if (!queued) {
    for (auto& m : *batch) give_back(*route.receiver, m);
    idle(route);
  }
}

void Listener::listen_once(Route& route, std::vector<sb::ReceivedMessage>& messages) {
  if (stopping()) {
    for (auto& m : messages) give_back(*route.receiver, m);
    idle(route);
    return;
  }
  if (!messages.empty()) {
    route.received_now();
    counters_.received += messages.size();
    auto work = intake_.sort(route, messages);
    bool warned = false;
    while (intake_.record_then_defer(route, work) == Intake::Recorded::kLedgerUnwritable) {
      // Hold the messages (their locks are renewed) until the ledger can be written: giving them
      // back would only spend their delivery count on the way to the dead-letter queue.
      if (!warned) {
        spdlog::warn("{}: holding {} message(s) until the ledger can be written",
                     route.options.entity_path(), work.size());
        warned = true;
      }
      while (!health_.wait_until_ok(LedgerHealth::Clock::now() + std::chrono::seconds(1),
                                    [this] { return stopping(); })) {
        if (stopping()) break;
      }
      if (stopping()) {
        for (auto& w : work) give_back(*route.receiver, *w.message);
        idle(route);
        return;
      }
    }
  }
  arm(route);
}

void Listener::idle(Route& route) {
  MutexLock lock(mutex_);
  slots_[route.index].busy = false;
  changed_.notify_all();
}

void Listener::wake() {
  std::vector<Route*> waking;
  {
    MutexLock lock(mutex_);
    if (stopping_ || !started_ || in_flight_.room() == 0 || !health_.ok()) return;
    for (const auto& r : routes_) {
      auto& slot = slots_[r->index];
      if (slot.waiting) {
        slot.waiting = false;
        slot.busy = true;
        waking.push_back(r.get());
      }
    }
  }
  for (auto* r : waking) {
    if (!pool_->submit([this, r] { arm(*r); })) idle(*r);
  }
}

void Listener::watch_ledger(const std::stop_token& stop) {
  auto stopped = [&] { return stop.stop_requested() || stopping(); };
  while (!stopped()) {
    if (!health_.wait_until_failed(LedgerHealth::Clock::now() + std::chrono::seconds(1), stopped)) {
      continue;
    }
    auto backoff = kProbeFirst;
    while (!stopped() && !health_.ok()) {
      if (health_.wait_until_ok(LedgerHealth::Clock::now() + backoff, stopped)) break;
      if (stopped()) break;
      if (auto problem = ledger_.write_problem()) {
        health_.failed(*problem);
        backoff = std::min(backoff * 2, kProbeMax);
      } else {
        health_.succeeded();
      }
    }
  }
}

void Listener::stop() {
  {
    MutexLock lock(mutex_);
    if (stopping_.exchange(true)) return;
    if (!started_) return;
  }
  health_.notify();
  in_flight_.notify();
  for (const auto& route : routes_) {
    if (route->receiver && route->receiver->cancel_receive_async()) idle(*route);
  }
  {
    MutexLock lock(mutex_);
    auto deadline = std::chrono::steady_clock::now() + kStopWait;
    while (std::any_of(slots_.begin(), slots_.end(), [](const Slot& s) { return s.busy; })) {
      if (changed_.wait_until(lock, deadline) == std::cv_status::timeout) {
        spdlog::warn("listeners: batches still in hand after {} s; stopping without them",
                     kStopWait.count());
        break;
      }
    }
  }
  watcher_.request_stop();
  health_.notify();
  if (watcher_.joinable()) watcher_.join();
  if (pool_) pool_->shutdown(std::chrono::milliseconds::max());
}

}  // namespace metro::dispatch
