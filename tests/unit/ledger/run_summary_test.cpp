// The field a lean completed row keeps its runs in: what is written is read back (at most
// kKeptRuns of them), and a damaged field gives what could be read, never more.
#include "../../../src/ledger/run_summary.hpp"

#include <gtest/gtest.h>

namespace metro::ledger::detail {
namespace {

using namespace std::chrono_literals;

HandlerRun run(std::string handler, int attempt, Clock::time_point started) {
  HandlerRun r;
  r.handler = std::move(handler);
  r.attempt = attempt;
  r.started = started;
  return r;
}

TEST(RunSummary, EveryRunComesBackInTheOrderTheyStarted) {
  Clock::time_point t0{std::chrono::milliseconds(1'700'000'000'000)};
  auto a1 = run("a", 1, t0);
  a1.outcome = HandlerRun::Outcome::kFailed;
  a1.finished = t0 + 5ms;
  a1.error = "boom";
  auto b1 = run("b", 1, t0 + 1ms);
  b1.outcome = HandlerRun::Outcome::kSucceeded;
  auto a2 = run("a", 2, t0 + 10ms);
  a2.outcome = HandlerRun::Outcome::kSucceeded;
  a2.finished = t0 + 12ms;
  a2.task_id = "task";
  a2.retries = 2;
  auto back = decode_runs(encode_runs(runs_to_keep({a2, a1, b1})));
  ASSERT_EQ(back.size(), 3u);
  EXPECT_EQ(back[0].handler, "a");
  EXPECT_EQ(back[0].outcome, HandlerRun::Outcome::kFailed);
  EXPECT_EQ(back[0].finished, t0 + 5ms);
  EXPECT_EQ(back[0].error, "boom");
  EXPECT_EQ(back[1].handler, "b");
  EXPECT_FALSE(back[1].finished);
  EXPECT_EQ(back[2].started, t0 + 10ms);
  EXPECT_EQ(back[2].finished, t0 + 12ms);
  EXPECT_EQ(back[2].task_id, "task");
  EXPECT_EQ(back[2].retries, 2);
  EXPECT_TRUE(decode_runs("").empty());
}

TEST(RunSummary, ManyRunsKeepTheLastOfEachHandlerAndTheLatestOthers) {
  Clock::time_point t0{std::chrono::milliseconds(1'700'000'000'000)};
  std::vector<HandlerRun> runs;
  runs.push_back(run("once", 1, t0));  // Ran first, never again.
  for (int i = 1; i <= 30; ++i) runs.push_back(run("flaky", i, t0 + std::chrono::seconds(i)));
  auto kept = runs_to_keep(runs);
  ASSERT_EQ(kept.size(), kKeptRuns);
  EXPECT_EQ(kept.front().handler, "once");
  EXPECT_EQ(kept[1].attempt, 12);
  EXPECT_EQ(kept.back().attempt, 30);
}

TEST(RunSummary, AnyBytesInTextsComeBack) {
  auto r = run(std::string("h:1,\0;", 6), 1, Clock::time_point{});
  r.error = std::string("12:ab,\0\xff", 8);
  r.task_id = ",,";
  auto back = decode_runs(encode_runs({r, run("other", 3, Clock::time_point{})}));
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].handler, r.handler);
  EXPECT_EQ(back[0].error, r.error);
  EXPECT_EQ(back[0].task_id, r.task_id);
  EXPECT_EQ(back[1].attempt, 3);
}

TEST(RunSummary, ADamagedFieldGivesTheRunsBeforeTheDamage) {
  auto field = encode_runs({run("a", 1, Clock::time_point{}), run("b", 2, Clock::time_point{})});
  // Every cut and every changed byte: never a throw, never a run that was not written.
  for (std::size_t cut = 0; cut < field.size(); ++cut) {
    EXPECT_LE(decode_runs(field.substr(0, cut)).size(), 1u) << cut;
  }
  for (std::size_t i = 0; i < field.size(); ++i) {
    for (char c : {'9', ':', ',', '-', 'x', '\0'}) {
      auto damaged = field;
      damaged[i] = c;
      EXPECT_LE(decode_runs(damaged).size(), 2u);
    }
  }
  EXPECT_TRUE(decode_runs("99999999999999999999:a").empty());
  EXPECT_TRUE(decode_runs("5:ab").empty());
  EXPECT_TRUE(decode_runs("-1:").empty());
  EXPECT_TRUE(decode_runs("1:a1,7,0,0,0,0:0:").empty());  // No such outcome.
}

}  // namespace
}  // namespace metro::ledger::detail
