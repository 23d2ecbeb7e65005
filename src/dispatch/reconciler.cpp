#include "reconciler.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <thread>

#include <spdlog/spdlog.h>

#include "../common/json_bounds.hpp"
#include "intake.hpp"
#include "naming.hpp"
#include "trace.hpp"

namespace metro::dispatch {

using ledger::State;

namespace {

constexpr std::size_t kPage = 100;      // Rows read at once.
constexpr std::size_t kPeekPage = 250;  // Messages per peek while scanning for orphans.
constexpr int kTransientTries = 5;      // Tries of a ledger read or a peek that failed.
constexpr std::chrono::seconds kTryAgain{1};

/// Sleeps `d` unless `stop` holds meanwhile (checked every 50 ms); false when stopped.
bool pause(std::chrono::milliseconds d, const Reconciler::StopFn& stop) {
  auto until = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < until) {
    if (stop()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return !stop();
}

}  // namespace

void Reconciler::for_each_claimed(
    Route& route, std::vector<State> states, std::optional<ledger::Clock::time_point> before,
    bool take_lapsed, const std::function<std::size_t()>& room, const StopFn& stop,
    const std::function<void(const ledger::DeferredMessage&)>& each) {
  ledger::Claim claim;
  claim.topic = route.topic();
  claim.subscription = route.subscription();
  claim.states = std::move(states);
  claim.own_updated_before = before;
  claim.lapsed = take_lapsed;
  int failures = 0;
  while (!stop()) {
    auto n = room();
    if (n == 0) return;
    claim.limit = std::min(n, kPage);
    std::vector<ledger::DeferredMessage> page;
    try {
      page = ledger_.claim(claim);
      failures = 0;
    } catch (const Error& e) {
      if (++failures >= kTransientTries) throw;
      spdlog::warn("{}: reading the ledger failed ({}); trying again", route.options.entity_path(),
                   log_value(e.what()));
      if (!pause(kTryAgain * failures, stop)) return;
      continue;
    }
    if (page.empty()) return;
    for (const auto& row : page) {
      if (stop()) return;
      each(row);
    }
    claim.after = page.back().key.sequence_number;
  }
}

std::size_t Reconciler::resolve_deferring(Route& route,
                                          std::optional<ledger::Clock::time_point> before,
                                          bool take_lapsed, const StopFn& stop) {
  std::size_t resolved = 0;
  auto any = [] { return kPage; };
  for_each_claimed(route, {State::kDeferring}, before, take_lapsed, any, stop,
                   [&](const ledger::DeferredMessage& r) {
    auto row = r;
    std::vector<sb::ReceivedMessage> peeked;
    for (int tries = 1;; ++tries) {
      try {
        peeked = route.receiver->peek(row.key.sequence_number, 1);
        break;
      } catch (const Error& e) {
        if (!e.is_transient() || tries >= kTransientTries || !pause(kTryAgain * tries, stop)) {
          spdlog::warn("{}: cannot peek to resolve it yet (the reaper tries again): {}",
                       name_of(row.key, row.correlation_id), log_value(e.what()));
          return;
        }
      }
    }
    try {
      if (peeked.empty() || peeked.front().sequence_number != row.key.sequence_number) {
        ledger_.set_state(row.key, State::kCompleted,
                          "was no longer in the subscription when its deferral was resolved");
      } else if (peeked.front().state != sb::MessageState::kDeferred) {
        ledger_.forget(row.key);  // Never deferred: it is delivered again and recorded then.
      } else {
        ledger_.set_state(row.key, State::kDeferred);
        row.state = State::kDeferred;
        resume(route, row, false);
      }
      ++resolved;
    } catch (const Error& e) {
      health_.failed(e.what());
      spdlog::error("ledger: cannot resolve {}: {}", name_of(row.key, row.correlation_id),
                    log_value(e.what()));
    }
  });
  return resolved;
}

std::size_t Reconciler::resume_unfinished(std::optional<ledger::Clock::time_point> before,
                                          bool take_lapsed, const StopFn& stop) {
  std::size_t resumed = 0;
  // Only as fast as there is room: rows are claimed no faster than they can run, so start-up
  // does not queue every stale row at once, and what this instance cannot run yet stays for the
  // others.
  auto room = [&]() -> std::size_t {
    while (!in_flight_.wait_for_room(std::chrono::steady_clock::now() + std::chrono::seconds(1),
                                     stop)) {
      if (stop()) return 0;
    }
    return in_flight_.room();
  };
  auto me = ledger_.instance_id();
  for (const auto& route : routes_) {
    std::size_t here = 0;
    std::map<std::string, std::size_t> taken_over;  // By the instance they were taken from.
    try {
      for_each_claimed(
          *route, {State::kDeferred, State::kRunning, State::kRetrying}, before, take_lapsed, room,
          stop, [&](const ledger::DeferredMessage& row) {
            if (in_flight_.contains(row.key)) {
              if (before) {
                spdlog::warn("{}: still being handled after deferred_deadline",
                             name_of(row.key, row.correlation_id));
              }
              return;
            }
            try {
              if (!resume(*route, row, false)) return;
              ++here;
              if (!row.owner.empty() && row.owner != me) {
                ++taken_over[row.owner];
              } else if (before) {
                spdlog::warn("{}: stale deferral (past deferred_deadline), handlers dispatched again",
                             name_of(row.key, row.correlation_id));
              }
            } catch (const Error& e) {
              spdlog::error("{}: cannot resume it: {}", name_of(row.key, row.correlation_id),
                            log_value(e.what()));
            }
          });
    } catch (const Error& e) {
      spdlog::error("{}: resuming unfinished messages stopped: {}", route->options.entity_path(),
                    log_value(e.what()));
    }
    for (const auto& [from, n] : taken_over) {
      spdlog::info("{}: took over {} unfinished message(s) of instance '{}' (its lease lapsed)",
                   route->options.entity_path(), n, log_value(from));
    }
    if (here > 0 && !before) {
      spdlog::info("{}: resumed {} unfinished message(s)", route->options.entity_path(), here);
    }
    resumed += here;
  }
  return resumed;
}

bool Reconciler::resume(Route& route, const ledger::DeferredMessage& row, bool fresh_budget) {
  if (row.key.generation != 0) return false;  // Superseded: no longer in Service Bus.
  if (in_flight_.contains(row.key)) return false;
  Task base;
  base.topic_name = route.topic();
  base.subscription_name = route.subscription();
  base.sequence_number = row.key.sequence_number;
  base.subject = row.subject;
  base.message_id = row.message_id;
  base.correlation_id = row.correlation_id;
  base.body = row.body;
  // Recorded by an older metro without one: the message starts a trace now.
  base.trace_parent = row.trace_parent.empty() ? new_traceparent() : row.trace_parent;
  auto key = key_of(base);
  if (row.body_truncated) {
    auto peeked = route.receiver->peek(row.key.sequence_number, 1);
    if (peeked.empty() || peeked.front().sequence_number != row.key.sequence_number) {
      ledger_.set_state(key, State::kCompleted,
                        "was no longer in the subscription when metro resumed it");
      return false;
    }
    base.body = peeked.front().body;
  }
  // As safe as receiving it: a body past the bounds is malformed, never handed to a handler.
  if (auto problem = json_bounds::check(base.body, json_bounds::kMaxDepth, kMaxBodyBytes)) {
    auto why = "the body is not acceptable JSON: " + *problem;
    spdlog::warn("{}: not resumed: {}", name_of(key, base.correlation_id), why);
    if (route.options.on_malformed_body == config::MalformedBodyPolicy::kDeadLetter) {
      (void)settler_.enqueue(route, key, sb::Disposition::kDeadLetter, "MalformedBody", why,
                             base.correlation_id, DeadLetterCause::kMalformedBody);
    } else {
      (void)settler_.enqueue(route, key, sb::Disposition::kComplete, {}, {}, base.correlation_id);
    }
    return true;
  }
  auto handlers = route.router.route(row.subject);
  if (handlers.empty()) {
    ledger_.set_state(key, row.state,
                      "no handler of the current config matches the subject '" +
                          clip(row.subject, kLogValueLimit) + "'");
    return false;
  }
  std::map<std::size_t, int> attempts;
  std::set<std::size_t> succeeded;
  // A Celery task an earlier metro sent and did not see end (it stopped or died meanwhile): its
  // outcome is picked up by its task id rather than the handler run again.
  std::map<std::size_t, ledger::HandlerRun> out;
  for (const auto& run : ledger_.runs(key)) {
    auto i = route.handler_index(run.handler);
    if (!i) continue;
    attempts[*i] = std::max(attempts[*i], run.attempt);
    if (run.outcome == ledger::HandlerRun::Outcome::kSucceeded) succeeded.insert(*i);
    if (run.outcome == ledger::HandlerRun::Outcome::kRunning && !run.task_id.empty() &&
        route.asynchronous(*i) && (out.count(*i) == 0 || out[*i].attempt < run.attempt)) {
      out[*i] = run;
    }
  }
  std::map<std::size_t, std::string> resume;
  for (const auto& [i, run] : out) {
    if (succeeded.count(i) != 0 || run.attempt != attempts[i] || fresh_budget) continue;
    resume[i] = run.task_id;
    attempts[i] = run.attempt - 1;  // The picked-up run keeps its attempt number.
  }
  std::vector<std::size_t> to_run;
  for (auto i : handlers) {
    if (succeeded.count(i) == 0) to_run.push_back(i);
  }
  if (to_run.empty()) {
    if (!route.explicit_completion(handlers)) {
      (void)settler_.enqueue(route, key, sb::Disposition::kComplete, {}, {}, base.correlation_id);
      return true;
    }
    if (!fresh_budget) {
      spdlog::warn("{}: its handlers succeeded but did not complete it; complete or retry it",
                   name_of(key, base.correlation_id));
      ledger_.set_state(key, State::kDeferred,
                        "the handlers succeeded but did not complete the message");
      return false;
    }
    to_run = handlers;  // An explicit retry runs them all again.
  }
  return runner_.dispatch(route, base, to_run, attempts, fresh_budget, resume);
}

void Reconciler::adopt_orphans(Route& route, const StopFn& stop) {
  std::size_t adopted = 0;
  std::int64_t from = 1;
  while (!stop()) {
    std::vector<sb::ReceivedMessage> page;
    try {
      page = route.receiver->peek(from, kPeekPage);
    } catch (const Error& e) {
      spdlog::warn("{}: the orphan scan stopped: {}", route.options.entity_path(),
                   log_value(e.what()));
      return;
    }
    if (page.empty()) break;
    std::vector<ledger::DeferredMessage> orphans;
    auto now = std::chrono::system_clock::now();
    for (auto& m : page) {
      from = std::max(from, m.sequence_number + 1);
      if (m.state != sb::MessageState::kDeferred) continue;
      ledger::MessageKey key{route.topic(), route.subscription(), m.sequence_number};
      auto known = ledger_.find(key);
      // Known, and the same message (a new one with a reused number is recorded apart).
      if (known &&
          (known->message_id.empty() || !m.message_id || known->message_id == *m.message_id)) {
        continue;
      }
      m.locked_until.reset();  // Peeked: no lock to lapse.
      auto c = classify(m, route.options, route.router, now);
      auto base = c.base;
      if (c.kind == Classification::Kind::kWork) {
        base = c.base;
      } else {
        base.body = m.body;
        auto lookup = routing::find_subject(route.options.subject_source, m.body, m.subject);
        base.subject = lookup.subject;
      }
      auto row = row_of(base, m.enqueued_time, State::kOrphaned, body_limit_);
      row.last_error = "found deferred in the subscription with no ledger record";
      orphans.push_back(std::move(row));
    }
    if (!orphans.empty()) {
      ledger_.record_all(orphans);
      adopted += orphans.size();
    }
  }
  if (adopted > 0) {
    spdlog::warn(
        "{}: adopted {} deferred message(s) no ledger row knew, as orphaned; list them "
        "and retry or complete them",
        route.options.entity_path(), adopted);
  }
}

}  // namespace metro::dispatch
