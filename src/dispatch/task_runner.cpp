#include "task_runner.hpp"

#include <spdlog/spdlog.h>

#include "naming.hpp"
#include "trace.hpp"

namespace metro::dispatch {

using ledger::State;
using SysClock = std::chrono::system_clock;

bool TaskRunner::dispatch(Route& route, const Task& base, const std::vector<std::size_t>& handlers,
                          const std::map<std::size_t, int>& attempts, bool fresh_budget) {
  auto tasks = in_flight_.begin(route.index, route.options, base, handlers, attempts, fresh_budget);
  if (!tasks) return false;
  counters_.routed += tasks->size();
  for (auto& t : *tasks) {
    if (!queue_.push(t)) {
      // Shutting down: the message stays deferred and the next start picks it up.
      in_flight_.drop(key_of(base));
      return true;
    }
  }
  return true;
}

template <class F>
void TaskRunner::write(const ledger::MessageKey& key, const std::string& correlation,
                       const char* what, F f) {
  try {
    f();
    health_.succeeded();
  } catch (const Error& e) {
    health_.failed(e.what());
    spdlog::error("ledger: cannot record {} of {}: {}", what, name_of(key, correlation),
                  log_value(e.what()));
  }
}

void TaskRunner::run(const Task& task) {
  auto key = key_of(task);
  // A task of a message settled meanwhile, or of an earlier message with this sequence number.
  if (!in_flight_.is_current(task)) return;
  auto* route = find_route(routes_, task.topic_name, task.subscription_name);
  if (route == nullptr) return;
  auto index = route->handler_index(task.handler);
  if (!index) return;
  const auto& handler = route->options.handlers[*index];
  const auto& correlation = task.correlation_id;
  ledger::HandlerRun run;
  run.handler = task.handler;
  run.attempt = task.attempt;
  run.started = SysClock::now();
  write(key, correlation, "the start of a run", [&] { ledger_.begin_run(key, run); });
  // Lines about a run name the message and its trace.
  const auto who = name_of(key, correlation) + trace_suffix(task.trace_parent);
  spdlog::debug("{}: {} attempt {} started", who, task.handler, task.attempt);
  Result result;
  try {
    result = route->handlers[*index]->run(task, handler.timeout);
  } catch (const std::exception& e) {
    result = {Outcome::kFailure, e.what(), {}};
  }
  run.finished = SysClock::now();
  route->record_duration(*index, result.duration);
  run.outcome = result.outcome == Outcome::kSuccess ? ledger::HandlerRun::Outcome::kSucceeded
                : result.outcome == Outcome::kRetry ? ledger::HandlerRun::Outcome::kRetry
                                                    : ledger::HandlerRun::Outcome::kFailed;
  run.error = result.error;
  write(key, correlation, "the end of a run", [&] { ledger_.record_run(key, run); });
  if (result.outcome == Outcome::kSuccess) {
    spdlog::debug("{}: {} succeeded in {} ms", who, task.handler, result.duration.count());
  } else {
    spdlog::warn("{}: {} attempt {} {}: {}", who, task.handler, task.attempt,
                 result.outcome == Outcome::kRetry ? "asked to retry" : "failed",
                 log_value(result.error, 1024));
  }
  double jitter = 0;
  {
    MutexLock lock(rng_mutex_);
    jitter = std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
  }
  auto decision = in_flight_.finished(task, result.outcome, result.error, jitter, stopping_);
  act(*route, task, decision);
}

void TaskRunner::act(Route& route, const Task& task, const Decision& d) {
  auto key = key_of(task);
  const auto& correlation = task.correlation_id;
  switch (d.kind) {
    case Decision::Kind::kUnknown:
    case Decision::Kind::kWait:
    case Decision::Kind::kCompletedByRequest:
      return;
    case Decision::Kind::kRetry:
      ++counters_.retries;
      write(key, correlation, "a retry",
            [&] { ledger_.set_state(key, State::kRetrying, d.error); });
      // A refused push means shutting down: the row stays `retrying` for the next start.
      if (!queue_.push(d.next, TaskQueue::Clock::now() + d.delay)) in_flight_.drop(key);
      return;
    case Decision::Kind::kLeave:
      write(key, correlation, "a retry",
            [&] { ledger_.set_state(key, State::kRetrying, d.error); });
      return;
    case Decision::Kind::kComplete:
      (void)settler_.enqueue(route, key, sb::Disposition::kComplete, {}, {}, correlation);
      return;
    case Decision::Kind::kDeadLetter:
      (void)settler_.enqueue(route, key, sb::Disposition::kDeadLetter, "HandlerFailed",
                             clip(d.error, kDescriptionLimit), correlation,
                             DeadLetterCause::kHandlerFailed);
      return;
    case Decision::Kind::kPark:
      ++counters_.failed;
      spdlog::warn("{}: parked as failed (it stays deferred; retry it by sequence number): {}",
                   name_of(key, correlation) + trace_suffix(task.trace_parent),
                   log_value(d.error, 1024));
      write(key, correlation, "parking", [&] { ledger_.set_state(key, State::kFailed, d.error); });
      return;
    case Decision::Kind::kAwaitExplicit:
      // The handler completes it itself (perhaps asynchronously, still under way).
      write(key, correlation, "the wait for an explicit completion", [&] {
        auto row = ledger_.find(key);
        if (row && row->state == State::kRunning) ledger_.set_state(key, State::kDeferred);
      });
      return;
  }
}

void TaskRunner::interrupt() {
  for (const auto& route : routes_) {
    for (const auto& handler : route->handlers) {
      if (handler) handler->interrupt();
    }
  }
}

}  // namespace metro::dispatch
