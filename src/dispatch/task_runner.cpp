#include "task_runner.hpp"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "naming.hpp"
#include "trace.hpp"

namespace metro::dispatch {

using ledger::State;
using SysClock = std::chrono::system_clock;

namespace {

/// Outcome threads: enough for the ledger's group commit to gather several outcomes at once.
constexpr std::size_t kMaxOutcomeThreads = 4;

ledger::HandlerRun::Outcome run_outcome(Outcome outcome) {
  switch (outcome) {
    case Outcome::kSuccess:
      return ledger::HandlerRun::Outcome::kSucceeded;
    case Outcome::kRetry:
      return ledger::HandlerRun::Outcome::kRetry;
    case Outcome::kFailure:
      return ledger::HandlerRun::Outcome::kFailed;
  }
  return ledger::HandlerRun::Outcome::kFailed;
}

}  // namespace

/// One asynchronous run: what its handler reports, carried to the ledger and the state machine.
/// Shared by the handler (until it reported the end) and the jobs it posts.
class TaskRunner::AsyncRun final : public RunObserver,
                                   public std::enable_shared_from_this<AsyncRun> {
 public:
  AsyncRun(TaskRunner& runner, Route& route, std::size_t index, Task task, ledger::HandlerRun run)
      : runner_(runner),
        route_(route),
        index_(index),
        task_(std::move(task)),
        key_(key_of(task_)),
        run_(std::move(run)) {}

  void sending(const std::string& task_id) override EXCLUDES(mutex_) {
    ledger::HandlerRun run;
    {
      MutexLock lock(mutex_);
      run_.task_id = task_id;
      run = run_;
    }
    runner_.record(route_, task_, run, true);
    spdlog::debug("{}: {} attempt {} sent as task {}", name_of(key_, task_.correlation_id),
                  task_.handler, task_.attempt, log_value(task_id, 64));
  }

  void progressed(int retries) override {
    auto self = shared_from_this();
    runner_.post([self, retries] { self->record_progress(retries); });
  }

  void finished(Result result) override {
    if (ended_.exchange(true)) return;
    auto self = shared_from_this();
    runner_.post([self, result = std::move(result)] { self->finish(result); });
  }

  void abandoned() override {
    if (ended_.exchange(true)) return;
    std::string task_id;
    {
      MutexLock lock(mutex_);
      task_id = run_.task_id;
    }
    spdlog::info(
        "{}: {} attempt {}: task {} is still out; it stays running and the next start picks "
        "its outcome up",
        name_of(key_, task_.correlation_id), task_.handler, task_.attempt, log_value(task_id, 64));
    runner_.in_flight_.drop(key_);
    runner_.async_ended();
  }

 private:
  /// A retry of the task itself: the run stays `running`, with its retries.
  void record_progress(int retries) EXCLUDES(mutex_) {
    // Held through the write, so that the end of the run (below) is written after it.
    MutexLock lock(mutex_);
    if (recorded_end_ || retries <= run_.retries) return;
    run_.retries = retries;
    auto run = run_;
    runner_.record(route_, task_, run, false);
    spdlog::info("{}: {} attempt {}: task {} retries itself ({} so far)",
                 name_of(key_, task_.correlation_id), task_.handler, task_.attempt,
                 log_value(run_.task_id, 64), retries);
  }

  void finish(const Result& result) EXCLUDES(mutex_) {
    ledger::HandlerRun run;
    {
      MutexLock lock(mutex_);
      recorded_end_ = true;
      run = run_;
    }
    runner_.finish(route_, index_, task_, std::move(run), result);
    runner_.async_ended();
  }

  TaskRunner& runner_;
  Route& route_;
  const std::size_t index_;
  const Task task_;
  const ledger::MessageKey key_;
  std::atomic<bool> ended_{false};  // finished or abandoned was reported.
  Mutex mutex_;
  ledger::HandlerRun run_ GUARDED_BY(mutex_);
  bool recorded_end_ GUARDED_BY(mutex_) = false;
};

TaskRunner::TaskRunner(const Routes& routes, ledger::Ledger& ledger, InFlight& in_flight,
                       Held& held, Settler& settler, TaskQueue& queue, ServiceCounters& counters,
                       LedgerHealth& health, const std::atomic<bool>& stopping)
    : routes_(routes),
      ledger_(ledger),
      in_flight_(in_flight),
      held_(held),
      settler_(settler),
      queue_(queue),
      counters_(counters),
      health_(health),
      stopping_(stopping) {
  bool any_async = false;
  for (const auto& route : routes_) {
    for (std::size_t i = 0; i < route->handlers.size(); ++i) {
      any_async = any_async || route->asynchronous(i);
    }
  }
  if (any_async) {
    outcomes_ = std::make_unique<WorkerPool>(std::min(kMaxOutcomeThreads, queue_.workers()));
  }
}

bool TaskRunner::dispatch(Route& route, const Task& base, const std::vector<std::size_t>& handlers,
                          const std::map<std::size_t, int>& attempts, bool fresh_budget,
                          const std::map<std::size_t, std::string>& resume) {
  auto tasks = in_flight_.begin(route.index, route.options, base, handlers, attempts, fresh_budget);
  if (!tasks) return false;
  counters_.routed += tasks->size();
  for (auto& t : *tasks) {
    if (!resume.empty()) {
      if (auto i = route.handler_index(t.handler); i && resume.count(*i) != 0) {
        t.resume_task_id = resume.at(*i);
      }
    }
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

void TaskRunner::record(Route& route, const Task& task, const ledger::HandlerRun& run,
                        bool begin) {
  auto key = key_of(task);
  const auto& correlation = task.correlation_id;
  if (route.options.defer == config::DeferMode::kWhenSlow) {
    if (held_.keep_run(key, task.message_id, run)) return;
    // Not held: deferred, or let go of (its number was given to a new message, which may have
    // been completed on its link already); only the first has a row to write to.
    if (!in_flight_.is_current(task)) return;
  }
  if (begin) {
    write(key, correlation, "the start of a run", [&] { ledger_.begin_run(key, run); });
  } else {
    write(key, correlation, "a run", [&] { ledger_.record_run(key, run); });
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
  if (route->asynchronous(*index)) {
    start_async(*route, *index, task, std::move(run));
    return;
  }
  record(*route, task, run, true);
  // Lines about a run name the message and its trace.
  const auto who = name_of(key, correlation) + trace_suffix(task.trace_parent);
  spdlog::debug("{}: {} attempt {} started", who, task.handler, task.attempt);
  Result result;
  try {
    result = route->handlers[*index]->run(task, handler.timeout);
  } catch (const std::exception& e) {
    result = {Outcome::kFailure, e.what(), {}};
  }
  finish(*route, *index, task, std::move(run), result);
}

void TaskRunner::start_async(Route& route, std::size_t index, const Task& task,
                             ledger::HandlerRun run) {
  auto key = key_of(task);
  if (!task.resume_task_id.empty()) {
    // A run an earlier metro sent and did not see end: its row is in the ledger already.
    run.task_id = task.resume_task_id;
    write(key, task.correlation_id, "the pick-up of a run", [&] {
      for (const auto& earlier : ledger_.runs(key)) {
        if (earlier.handler == run.handler && earlier.attempt == run.attempt) {
          run.started = earlier.started;
          run.retries = earlier.retries;
        }
      }
      ledger_.set_state(key, State::kRunning);
    });
    spdlog::info("{}: {} attempt {}: picking up task {}, sent before metro restarted",
                 name_of(key, task.correlation_id), task.handler, task.attempt,
                 log_value(task.resume_task_id, 64));
  }
  {
    MutexLock lock(async_mutex_);
    ++async_out_;
  }
  auto observer = std::make_shared<AsyncRun>(*this, route, index, task, std::move(run));
  try {
    route.handlers[index]->start(task, route.options.handlers[index].timeout, observer);
  } catch (const std::exception& e) {
    observer->finished({Outcome::kFailure, e.what(), {}});  // Ignored if it ended already.
  }
}

void TaskRunner::finish(Route& route, std::size_t index, const Task& task, ledger::HandlerRun run,
                        const Result& result) {
  auto key = key_of(task);
  const auto& correlation = task.correlation_id;
  const auto who = name_of(key, correlation) + trace_suffix(task.trace_parent);
  run.finished = SysClock::now();
  route.record_duration(index, result.duration);
  run.outcome = run_outcome(result.outcome);
  run.error = result.error;
  if (!result.task_id.empty()) run.task_id = result.task_id;
  run.retries = std::max(run.retries, result.retries);
  if (route.options.defer == config::DeferMode::kWhenSlow && result.outcome != Outcome::kSuccess) {
    // A held message is deferred (recorded first) before a retry, a park or a dead-letter.
    switch (held_.defer(key, task.message_id, [this] { return stopping_.load(); })) {
      case Held::Deferral::kGone:
        in_flight_.drop(key);  // Delivered again, or completed: this outcome is of no use.
        return;
      case Held::Deferral::kSuperseded:
        return;  // Of an earlier message with this number, let go of already.
      case Held::Deferral::kDeferred:
      case Held::Deferral::kNotHeld:
        break;
    }
  }
  record(route, task, run, false);
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
  act(route, task, decision);
}

void TaskRunner::act(Route& route, const Task& task, const Decision& d) {
  auto key = key_of(task);
  const auto& correlation = task.correlation_id;
  switch (d.kind) {
    case Decision::Kind::kUnknown:
    case Decision::Kind::kWait:
      return;
    case Decision::Kind::kCompletedByRequest:
      // Completed on its link while runs went on, perhaps: they have all ended now.
      if (route.options.defer == config::DeferMode::kWhenSlow) held_.ended(key, task.message_id);
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
      // A held message is completed on its link: no deferral, no ledger write.
      if (route.options.defer == config::DeferMode::kWhenSlow && held_.complete(key)) {
        held_.ended(key, task.message_id);  // No run of it is left.
        return;
      }
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
      // The handler completes it itself (perhaps asynchronously, still under way): a held
      // message is deferred first, so that it can be completed by sequence number.
      if (route.options.defer == config::DeferMode::kWhenSlow) {
        auto deferral = held_.defer(key, task.message_id, [this] { return stopping_.load(); });
        if (deferral == Held::Deferral::kGone || deferral == Held::Deferral::kSuperseded) return;
      }
      write(key, correlation, "the wait for an explicit completion", [&] {
        auto row = ledger_.find(key);
        if (row && row->state == State::kRunning) ledger_.set_state(key, State::kDeferred);
      });
      return;
  }
}

void TaskRunner::post(std::function<void()> job) {
  if (!outcomes_ || !outcomes_->submit(job)) job();
}

void TaskRunner::async_ended() {
  {
    MutexLock lock(async_mutex_);
    --async_out_;
  }
  async_changed_.notify_all();
}

bool TaskRunner::wait_for_async(std::chrono::steady_clock::time_point deadline) {
  MutexLock lock(async_mutex_);
  while (async_out_ != 0) {
    if (async_changed_.wait_until(lock, deadline) == std::cv_status::timeout) break;
  }
  return async_out_ == 0;
}

void TaskRunner::interrupt() {
  for (const auto& route : routes_) {
    for (const auto& handler : route->handlers) {
      if (handler) handler->interrupt();
    }
  }
}

void TaskRunner::stop() {
  // An asynchronous handler interrupted ends every run it has out (abandoned, or a retry when
  // not sent yet) before `interrupt` returns, and calls nothing afterwards.
  for (const auto& route : routes_) {
    for (std::size_t i = 0; i < route->handlers.size(); ++i) {
      if (route->asynchronous(i)) route->handlers[i]->interrupt();
    }
  }
  if (!outcomes_) return;
  std::vector<std::function<void()>> left;
  outcomes_->shutdown(std::chrono::milliseconds::max(), &left);
  for (auto& job : left) job();  // Outcomes that arrived last: recorded all the same.
}

}  // namespace metro::dispatch
