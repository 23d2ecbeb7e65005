#include "intake.hpp"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "../common/json_bounds.hpp"
#include "naming.hpp"
#include "trace.hpp"

namespace metro::dispatch {

using ledger::State;
using SysClock = std::chrono::system_clock;

namespace {

// How long a listener waits for Service Bus to confirm the settlements and deferrals of a batch.
constexpr std::chrono::seconds kConfirmWait{30};

/// The message's correlation id, else the `id` of its JSON body, else empty.
std::string correlation_of(const sb::ReceivedMessage& m, const nlohmann::json* body) {
  if (m.correlation_id && !m.correlation_id->empty()) return *m.correlation_id;
  if (body != nullptr && body->is_object()) {
    auto it = body->find("id");
    if (it != body->end()) {
      if (it->is_string()) return it->get<std::string>();
      if (it->is_number() || it->is_boolean()) return it->dump();
    }
  }
  return {};
}

/// Why a body that is not a data section cannot be handled, or nullopt. An AMQP value holding
/// text (or binary) is read like data; a value of another type, a sequence or no body is not.
std::optional<std::string> body_section_problem(const sb::ReceivedMessage& m) {
  switch (m.body_section) {
    case sb::BodySection::kData:
      return std::nullopt;
    case sb::BodySection::kAmqpValue:
      if (!m.body.empty()) return std::nullopt;
      return "the body is an AMQP value section that is not text (a map, list or number, as an "
             "SDK sends with bodyType \"value\"), not JSON data";
    case sb::BodySection::kAmqpSequence:
      return "the body is an AMQP sequence section (bodyType \"sequence\"), not JSON data";
    case sb::BodySection::kNone:
      return "the message has no body";
  }
  return std::nullopt;
}

}  // namespace

Classification classify(const sb::ReceivedMessage& m, const config::SubscriptionOptions& options,
                        const routing::Router& router, SysClock::time_point now) {
  Classification c;
  c.base.topic_name = options.topic_name;
  c.base.subscription_name = options.subscription_name;
  c.base.sequence_number = m.sequence_number;
  c.base.message_id = m.message_id.value_or("");
  c.base.trace_parent = trace_context_of(m.application_properties);
  c.enqueued_time = m.enqueued_time;
  if (m.locked_until && *m.locked_until <= now) {
    c.kind = Classification::Kind::kLockExpired;
    return c;
  }
  // Handlers get JSON data: say what else arrived rather than where a JSON parse broke.
  if (auto problem = body_section_problem(m)) {
    c.base.correlation_id = m.correlation_id.value_or("");
    c.kind = Classification::Kind::kMalformed;
    c.reason = *problem;
    return c;
  }
  // Bounded before it is parsed: a body nested 100,000 deep must never become a value.
  if (auto problem = json_bounds::check(m.body, json_bounds::kMaxDepth, kMaxBodyBytes)) {
    c.base.correlation_id = m.correlation_id.value_or("");
    c.kind = Classification::Kind::kMalformed;
    c.reason = "the body is not acceptable JSON: " + *problem;
    return c;
  }
  auto body = nlohmann::json::parse(m.body, nullptr, false);
  if (body.is_discarded()) {
    c.base.correlation_id = m.correlation_id.value_or("");
    c.kind = Classification::Kind::kMalformed;
    try {
      [[maybe_unused]] auto again = nlohmann::json::parse(m.body);  // Throws why it is not.
      c.reason = "the body is not JSON";
    } catch (const nlohmann::json::exception& e) {
      c.reason = std::string("the body is not JSON: ") + e.what();
    }
    c.reason = clip(c.reason, kDescriptionLimit);
    return c;
  }
  c.base.correlation_id = correlation_of(m, &body);
  auto lookup = routing::find_subject(options.subject_source, m.body, m.subject);
  if (lookup.status != routing::SubjectLookup::Status::kFound) {
    c.kind = lookup.status == routing::SubjectLookup::Status::kMalformedBody
                 ? Classification::Kind::kMalformed
                 : Classification::Kind::kNoMatch;
    c.reason = clip(lookup.problem, kDescriptionLimit);
    return c;
  }
  c.handlers = router.route(lookup.subject);
  if (c.handlers.empty()) {
    c.kind = Classification::Kind::kNoMatch;
    c.reason = clip("no handler matches the subject '" + lookup.subject + "'", kDescriptionLimit);
    return c;
  }
  c.kind = Classification::Kind::kWork;
  c.base.subject = lookup.subject;
  c.base.body = m.body;
  return c;
}

ledger::DeferredMessage row_of(const Task& base, SysClock::time_point enqueued, State state,
                               std::size_t body_limit) {
  ledger::DeferredMessage row;
  row.key = key_of(base);
  row.subject = base.subject;
  row.message_id = base.message_id;
  row.correlation_id = base.correlation_id;
  row.body = base.body;
  if (row.body.size() > body_limit) {
    row.body.resize(body_limit);
    row.body_truncated = true;
  }
  row.enqueued_time = enqueued;
  row.state = state;
  row.trace_parent = base.trace_parent;
  return row;
}

std::vector<std::string> wait_all(std::vector<std::future<void>>& futures,
                                  std::chrono::steady_clock::time_point deadline) {
  std::vector<std::string> errors(futures.size());
  for (std::size_t i = 0; i < futures.size(); ++i) {
    if (!futures[i].valid()) continue;
    if (futures[i].wait_until(deadline) != std::future_status::ready) {
      errors[i] = "Service Bus did not confirm it in time";
      continue;
    }
    try {
      futures[i].get();
    } catch (const sb::LockLostError& e) {
      errors[i] = std::string("lock lost: ") + e.what();
    } catch (const std::exception& e) {
      errors[i] = e.what();
    }
  }
  return errors;
}

std::vector<Intake::Work> Intake::sort(Route& route, std::vector<sb::ReceivedMessage>& batch) {
  auto& receiver = *route.receiver;
  std::vector<Work> work;
  std::vector<std::future<void>> settling;
  std::vector<std::string> names;
  std::vector<std::optional<DeadLetterCause>> causes;  // Counted once confirmed.
  auto now = SysClock::now();
  for (auto& m : batch) {
    auto c = classify(m, route.options, route.router, now);
    auto key = key_of(c.base);
    auto name = name_of(key, c.base.correlation_id);
    switch (c.kind) {
      case Classification::Kind::kLockExpired:
        continue;  // Delivered again.
      case Classification::Kind::kWork:
        work.push_back({&m, std::move(c)});
        continue;
      case Classification::Kind::kMalformed:
        ++counters_.malformed;
        if (route.options.on_malformed_body == config::MalformedBodyPolicy::kDeadLetter) {
          spdlog::warn("{}: dead-lettered (MalformedBody): {}", name, log_value(c.reason));
          settling.push_back(receiver.dead_letter_async(m, "MalformedBody", c.reason));
          causes.emplace_back(DeadLetterCause::kMalformedBody);
        } else {
          spdlog::info("{}: completed without handling: {}", name, log_value(c.reason));
          settling.push_back(receiver.complete_async(m));
          causes.emplace_back();
        }
        break;
      case Classification::Kind::kNoMatch:
        ++counters_.no_match;
        switch (route.options.on_no_match) {
          case config::NoMatchPolicy::kComplete:
            spdlog::debug("{}: completed: {}", name, log_value(c.reason));
            settling.push_back(receiver.complete_async(m));
            causes.emplace_back();
            break;
          case config::NoMatchPolicy::kDeadLetter:
            spdlog::info("{}: dead-lettered (NoHandler): {}", name, log_value(c.reason));
            settling.push_back(receiver.dead_letter_async(m, "NoHandler", c.reason));
            causes.emplace_back(DeadLetterCause::kNoHandler);
            break;
          case config::NoMatchPolicy::kAbandon:
            spdlog::info("{}: abandoned: {}", name, log_value(c.reason));
            settling.push_back(receiver.abandon_async(m));
            causes.emplace_back();
            break;
        }
        break;
    }
    names.push_back(name);
  }
  auto errors = wait_all(settling, std::chrono::steady_clock::now() + kConfirmWait);
  for (std::size_t i = 0; i < errors.size(); ++i) {
    if (errors[i].empty()) {
      if (causes[i]) counters_.dead_letter(*causes[i]);
      continue;
    }
    spdlog::warn("{}: settling failed ({}); it will be delivered again", names[i],
                 log_value(errors[i]));
  }
  return work;
}

namespace {

/// An earlier message with this sequence number still in hand (the subscription's numbers started
/// again) is gone from Service Bus: let it go (the ledger keeps its record apart).
void let_go_of_earlier(InFlight& in_flight, const Task& base) {
  auto key = key_of(base);
  if (auto id = in_flight.message_id(key); id && *id != base.message_id) {
    spdlog::warn(
        "{}: a new message with this sequence number arrived; the earlier one in hand "
        "is no longer in Service Bus and is let go",
        name_of(key, base.correlation_id));
    in_flight.drop(key);
  }
}

}  // namespace

void Intake::hold(Route& route, std::vector<Work>& work) {
  auto now = SysClock::now();
  auto steady_now = Held::Clock::now();
  for (auto& w : work) {
    const auto& c = w.classification;
    let_go_of_earlier(in_flight_, c.base);
    auto defer_at = steady_now + defer_after(route.options, *w.message, now);
    if (held_.hold(route, std::move(*w.message), c.base, c.enqueued_time, defer_at) ==
        Held::Hold::kHeld) {
      runner_.dispatch(route, c.base, c.handlers, {}, false);
    }
  }
}

Intake::Recorded Intake::record_then_defer(Route& route, std::vector<Work>& work) {
  if (work.empty()) return Recorded::kYes;
  if (route.options.defer == config::DeferMode::kWhenSlow) {
    hold(route, work);
    return Recorded::kYes;
  }
  auto& receiver = *route.receiver;
  std::vector<ledger::DeferredMessage> rows;
  for (auto& w : work) {
    const auto& base = w.classification.base;
    let_go_of_earlier(in_flight_, base);
    rows.push_back(row_of(base, w.classification.enqueued_time, State::kDeferring, body_limit_));
  }
  try {
    ledger_.record_all(rows);
    health_.succeeded();
  } catch (const Error& e) {
    // Without a record a deferral could be lost: keep the messages and stop taking more.
    health_.failed(e.what());
    return Recorded::kLedgerUnwritable;
  }
  std::vector<std::future<void>> deferrals;
  for (auto& w : work) deferrals.push_back(receiver.defer_async(*w.message));
  auto errors = wait_all(deferrals, std::chrono::steady_clock::now() + kConfirmWait);
  std::vector<ledger::MessageKey> deferred;
  std::vector<Work*> dispatched;
  for (std::size_t i = 0; i < work.size(); ++i) {
    const auto& base = work[i].classification.base;
    auto key = key_of(base);
    if (errors[i].empty()) {
      deferred.push_back(key);
      dispatched.push_back(&work[i]);
    } else if (errors[i].rfind("lock lost", 0) == 0) {
      spdlog::info("{}: lock lost before it was deferred; it will be delivered again",
                   name_of(key, base.correlation_id));
      try {
        ledger_.forget(key);
      } catch (const Error& e) {
        spdlog::warn("ledger: cannot drop {}: {}", name_of(key, base.correlation_id),
                     log_value(e.what()));
      }
    } else {
      // Whether the deferral happened is unknown: the row stays `deferring` and the reaper
      // resolves it by peeking.
      spdlog::warn("{}: deferring failed ({}); will be resolved by peeking",
                   name_of(key, base.correlation_id), log_value(errors[i]));
    }
  }
  if (deferred.empty()) return Recorded::kYes;
  counters_.deferred += deferred.size();
  try {
    ledger_.set_state_all(deferred, State::kDeferred);
  } catch (const Error& e) {
    health_.failed(e.what());
    spdlog::error("ledger: cannot mark {} message(s) deferred: {}", deferred.size(),
                  log_value(e.what()));
  }
  for (auto* w : dispatched) {
    runner_.dispatch(route, w->classification.base, w->classification.handlers, {}, false);
  }
  return Recorded::kYes;
}

}  // namespace metro::dispatch
