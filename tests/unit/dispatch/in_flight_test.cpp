// The in-flight state machine alone: no bus, no ledger, no threads.
#include "../../../src/dispatch/in_flight.hpp"

#include <gtest/gtest.h>

#include <metro/config/config.hpp>

namespace metro::dispatch {
namespace {

using Kind = Decision::Kind;

config::HandlerOptions handler(const std::string& name, int max_attempts = 3,
                               config::FailurePolicy on_failure = config::FailurePolicy::kPark,
                               config::Completion completion = config::Completion::kAuto) {
  config::HandlerOptions h;
  h.name = name;
  h.subject = "s";
  h.retry.max_attempts = max_attempts;
  h.retry.backoff = std::chrono::milliseconds(100);
  h.retry.max_backoff = std::chrono::milliseconds(100);
  h.on_failure = on_failure;
  h.completion = completion;
  return h;
}

Task base(std::int64_t seq = 1, const std::string& id = "m1") {
  Task t;
  t.topic_name = "orders";
  t.subscription_name = "billing";
  t.sequence_number = seq;
  t.message_id = id;
  t.correlation_id = "c";
  return t;
}

class InFlightTest : public ::testing::Test {
 protected:
  config::SubscriptionOptions options_;
  InFlight in_flight_{2};
};

TEST_F(InFlightTest, CompletesWhenEveryHandlerSucceeded) {
  options_.handlers = {handler("a"), handler("b")};
  auto tasks = in_flight_.begin(0, options_, base(), {0, 1}, {}, false);
  ASSERT_TRUE(tasks);
  ASSERT_EQ(tasks->size(), 2u);
  EXPECT_FALSE(in_flight_.begin(0, options_, base(), {0, 1}, {}, false));  // Tracked already.
  EXPECT_EQ(in_flight_.finished((*tasks)[0], Outcome::kSuccess, {}, 0.5, false).kind, Kind::kWait);
  EXPECT_EQ(in_flight_.finished((*tasks)[1], Outcome::kSuccess, {}, 0.5, false).kind,
            Kind::kComplete);
  EXPECT_EQ(in_flight_.size(), 0u);
  // A late duplicate finds nothing.
  EXPECT_EQ(in_flight_.finished((*tasks)[1], Outcome::kSuccess, {}, 0.5, false).kind,
            Kind::kUnknown);
}

TEST_F(InFlightTest, RetriesWithinTheBudgetThenParksOrDeadLetters) {
  options_.handlers = {handler("p", 2), handler("d", 1, config::FailurePolicy::kDeadLetter)};
  auto tasks = *in_flight_.begin(0, options_, base(), {0, 1}, {}, false);
  auto first = in_flight_.finished(tasks[0], Outcome::kFailure, "down", 0.0, false);
  ASSERT_EQ(first.kind, Kind::kRetry);
  EXPECT_EQ(first.next.attempt, 2);
  EXPECT_EQ(first.delay, std::chrono::milliseconds(50));
  EXPECT_EQ(first.error, "p: down");
  EXPECT_EQ(in_flight_.finished(first.next, Outcome::kRetry, "still", 0.0, false).kind,
            Kind::kWait);
  auto last = in_flight_.finished(tasks[1], Outcome::kFailure, "bad", 0.0, false);
  EXPECT_EQ(last.kind, Kind::kDeadLetter);  // Dead-letter wins over park.
  EXPECT_EQ(last.error, "d: bad");
}

TEST_F(InFlightTest, TheRetryOfARunPickedUpAfterARestartIsANewRun) {
  options_.handlers = {handler("celery", 3)};
  auto tasks = *in_flight_.begin(0, options_, base(), {0}, {{0, 1}}, false);
  tasks[0].resume_task_id = "6f1c0e6a-1b2c-4d5e-8f90-123456789abc";  // Sent by an earlier metro.
  EXPECT_EQ(tasks[0].attempt, 2);
  auto retry = in_flight_.finished(tasks[0], Outcome::kFailure, "no outcome", 0.0, false);
  ASSERT_EQ(retry.kind, Kind::kRetry);
  EXPECT_EQ(retry.next.attempt, 3);
  EXPECT_EQ(retry.next.resume_task_id, "") << "the next attempt would wait for the same task";
}

TEST_F(InFlightTest, ExplicitCompletionIsAwaitedAndAFreshBudgetCountsAgain) {
  options_.handlers = {
      handler("e", 2, config::FailurePolicy::kPark, config::Completion::kExplicit)};
  auto tasks = *in_flight_.begin(0, options_, base(), {0}, {{0, 2}}, true);
  EXPECT_EQ(tasks[0].attempt, 3);  // Numbering goes on.
  auto retry = in_flight_.finished(tasks[0], Outcome::kFailure, "x", 0.0, false);
  ASSERT_EQ(retry.kind, Kind::kRetry);  // Attempts before the retry by request do not count.
  EXPECT_EQ(in_flight_.finished(retry.next, Outcome::kSuccess, {}, 0.0, false).kind,
            Kind::kAwaitExplicit);
}

TEST_F(InFlightTest, ACompletionByRequestEndsRetries) {
  options_.handlers = {handler("a", 5)};
  auto tasks = *in_flight_.begin(0, options_, base(), {0}, {}, false);
  EXPECT_TRUE(in_flight_.mark_completed(key_of(tasks[0])));
  EXPECT_EQ(in_flight_.finished(tasks[0], Outcome::kFailure, "x", 0.0, false).kind,
            Kind::kCompletedByRequest);
  EXPECT_FALSE(in_flight_.contains(key_of(tasks[0])));
}

TEST_F(InFlightTest, StoppingLeavesRetriesForTheNextStart) {
  options_.handlers = {handler("a", 5)};
  auto tasks = *in_flight_.begin(0, options_, base(), {0}, {}, false);
  EXPECT_EQ(in_flight_.finished(tasks[0], Outcome::kFailure, "x", 0.0, true).kind, Kind::kLeave);
  EXPECT_EQ(in_flight_.size(), 0u);
}

TEST_F(InFlightTest, ATaskOfAnEarlierMessageWithTheSameNumberIsNotCurrent) {
  options_.handlers = {handler("a")};
  auto old_tasks = *in_flight_.begin(0, options_, base(1, "old"), {0}, {}, false);
  EXPECT_TRUE(in_flight_.is_current(old_tasks[0]));
  in_flight_.drop(key_of(old_tasks[0]));
  auto new_tasks = *in_flight_.begin(0, options_, base(1, "new"), {0}, {}, false);
  EXPECT_FALSE(in_flight_.is_current(old_tasks[0]));
  EXPECT_EQ(in_flight_.finished(old_tasks[0], Outcome::kSuccess, {}, 0.0, false).kind,
            Kind::kUnknown);
  EXPECT_EQ(in_flight_.message_id(key_of(new_tasks[0])), "new");
}

TEST_F(InFlightTest, RoomIsTheCapacityLeftAndDroppingCallsBack) {
  options_.handlers = {handler("a")};
  int called = 0;
  in_flight_.on_room([&] { ++called; });
  EXPECT_EQ(in_flight_.room(), 2u);
  auto a = *in_flight_.begin(0, options_, base(1), {0}, {}, false);
  auto b = *in_flight_.begin(0, options_, base(2), {0}, {}, false);
  EXPECT_EQ(in_flight_.room(), 0u);
  EXPECT_FALSE(in_flight_.wait_for_room(std::chrono::steady_clock::now(), [] { return false; }));
  in_flight_.finished(a[0], Outcome::kSuccess, {}, 0.0, false);
  EXPECT_EQ(called, 1);
  EXPECT_TRUE(in_flight_.wait_for_room(std::chrono::steady_clock::now(), [] { return false; }));
}

}  // namespace
}  // namespace metro::dispatch
