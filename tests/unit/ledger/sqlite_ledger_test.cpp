// The SQLite ledger on a real file.
#include <filesystem>
#include <thread>

#include <gtest/gtest.h>

#include <metro/ledger/ledger.hpp>

namespace metro::ledger {
namespace {

class SqliteLedgerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = std::filesystem::temp_directory_path() /
            ("metro-ledger-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".db");
    std::filesystem::remove(path_);
    ledger_ = open_ledger("sqlite://" + path_.string());
  }
  void TearDown() override {
    ledger_.reset();
    for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path_.string() + suffix);
  }

  DeferredMessage message(const std::string& sub, std::int64_t seq, const std::string& subject) {
    DeferredMessage m;
    m.key = {"metro-demo", sub, seq};
    m.subject = subject;
    m.message_id = "id-" + std::to_string(seq);
    m.correlation_id = "corr-" + std::to_string(seq);
    m.body = R"({"subject":")" + subject + "\"}";
    return m;
  }

  std::filesystem::path path_;
  std::unique_ptr<Ledger> ledger_;
};

TEST_F(SqliteLedgerTest, RecordsIntentThenFollowsStates) {
  auto m = message("a", 7, "MetroDemo/Type/GeekJokes");
  ledger_->record(m);
  auto found = ledger_->find(m.key);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->state, State::kDeferring);
  EXPECT_EQ(found->subject, m.subject);
  EXPECT_EQ(found->correlation_id, "corr-7");
  EXPECT_EQ(found->body, m.body);
  EXPECT_TRUE(ledger_->set_state(m.key, State::kDeferred));
  EXPECT_TRUE(ledger_->set_state(m.key, State::kFailed, "handler exited with 1"));
  EXPECT_TRUE(ledger_->set_state(m.key, State::kRetrying));
  found = ledger_->find(m.key);
  EXPECT_EQ(found->state, State::kRetrying);
  EXPECT_EQ(found->last_error, "handler exited with 1");
  EXPECT_FALSE(ledger_->set_state({"metro-demo", "a", 999}, State::kCompleted));
  EXPECT_FALSE(ledger_->find({"metro-demo", "a", 999}));
}

TEST_F(SqliteLedgerTest, KeepsHandlerRunsPerAttempt) {
  auto m = message("a", 1, "s");
  ledger_->record(m);
  HandlerRun run;
  run.handler = "print-joke.sh";
  run.started = Clock::now();
  ledger_->record_run(m.key, run);
  run.outcome = HandlerRun::Outcome::kFailed;
  run.finished = Clock::now();
  run.error = "exit 1";
  ledger_->record_run(m.key, run);  // the same attempt, finished
  run.attempt = 2;
  run.outcome = HandlerRun::Outcome::kSucceeded;
  run.error.clear();
  ledger_->record_run(m.key, run);
  auto runs = ledger_->runs(m.key);
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].outcome, HandlerRun::Outcome::kFailed);
  EXPECT_EQ(runs[0].error, "exit 1");
  EXPECT_TRUE(runs[0].finished);
  EXPECT_EQ(runs[1].attempt, 2);
  EXPECT_EQ(to_string(runs[1].outcome), "succeeded");
}

TEST_F(SqliteLedgerTest, ListsWithFiltersAndCursorPages) {
  for (int i = 1; i <= 5; ++i) ledger_->record(message("a", i, i % 2 ? "Jokes/Geek" : "Other"));
  ledger_->record(message("b", 1, "Jokes/Dad"));
  ledger_->set_state({"metro-demo", "a", 3}, State::kFailed, "boom");
  Query q;
  q.limit = 2;
  auto first = ledger_->list(q);
  ASSERT_EQ(first.items.size(), 2u);
  ASSERT_TRUE(first.next);
  q.after = first.next;
  auto second = ledger_->list(q);
  EXPECT_EQ(second.items.front().key.sequence_number, 3);
  q.after = second.next;
  auto third = ledger_->list(q);
  ASSERT_EQ(third.items.size(), 2u);
  EXPECT_EQ(third.items.back().key.subscription, "b");
  EXPECT_FALSE(third.next);

  Query failed;
  failed.state = State::kFailed;
  auto page = ledger_->list(failed);
  ASSERT_EQ(page.items.size(), 1u);
  EXPECT_EQ(page.items[0].last_error, "boom");

  Query jokes;
  jokes.subject_prefix = "Jokes/";
  jokes.subscription = "a";
  EXPECT_EQ(ledger_->list(jokes).items.size(), 3u);

  Query bad;
  bad.after = "not a cursor";
  EXPECT_THROW(ledger_->list(bad), InvalidArgument);

  auto counts = ledger_->counts("metro-demo", "a");
  EXPECT_EQ(counts[State::kDeferring], 4u);
  EXPECT_EQ(counts[State::kFailed], 1u);
  EXPECT_EQ(ledger_->counts()[State::kDeferring], 5u);
}

TEST_F(SqliteLedgerTest, SurvivesReopening) {
  ledger_->record(message("a", 1, "s"));
  ledger_->set_state({"metro-demo", "a", 1}, State::kDeferred);
  ledger_.reset();
  ledger_ = open_ledger("sqlite://" + path_.string());
  EXPECT_EQ(ledger_->find({"metro-demo", "a", 1})->state, State::kDeferred);
}

TEST_F(SqliteLedgerTest, ConcurrentWritersShareCommitsAndLoseNothing) {
  constexpr int kThreads = 8;
  constexpr int kEach = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        auto m = message("a", t * kEach + i + 1, "s");
        ledger_->record(m);
        ledger_->set_state(m.key, State::kDeferred);
        ledger_->record_run(m.key, {"h", 1, HandlerRun::Outcome::kSucceeded, Clock::now(), {}, {}});
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ledger_->counts()[State::kDeferred], static_cast<std::size_t>(kThreads * kEach));
  EXPECT_EQ(ledger_->runs({"metro-demo", "a", 1}).size(), 1u);
}

TEST_F(SqliteLedgerTest, ManyAtOnceAndForgetting) {
  ledger_->record_all({message("a", 1, "s"), message("a", 2, "s"), message("a", 3, "s")});
  EXPECT_EQ(ledger_->set_state_all(
                {{"metro-demo", "a", 1}, {"metro-demo", "a", 2}, {"metro-demo", "a", 9}},
                State::kCompleted),
            2u);
  ledger_->record_run({"metro-demo", "a", 3},
                      {"h", 1, HandlerRun::Outcome::kRunning, Clock::now(), {}, {}});
  EXPECT_TRUE(ledger_->forget({"metro-demo", "a", 3}));
  EXPECT_FALSE(ledger_->forget({"metro-demo", "a", 3}));
  EXPECT_FALSE(ledger_->find({"metro-demo", "a", 3}));
  EXPECT_TRUE(ledger_->runs({"metro-demo", "a", 3}).empty());
  EXPECT_EQ(ledger_->counts()[State::kCompleted], 2u);
}

TEST_F(SqliteLedgerTest, PrunesSettledMessagesPastRetention) {
  ledger_->record_all({message("a", 1, "s"), message("a", 2, "s"), message("a", 3, "s")});
  ledger_->set_state({"metro-demo", "a", 1}, State::kCompleted);
  ledger_->set_state({"metro-demo", "a", 2}, State::kFailed);
  ledger_->set_state({"metro-demo", "a", 3}, State::kDeadLettered);
  ledger_->record_run({"metro-demo", "a", 1},
                      {"h", 1, HandlerRun::Outcome::kSucceeded, Clock::now(), {}, {}});
  EXPECT_EQ(ledger_->prune(Clock::now() - std::chrono::hours(1)), 0u);
  EXPECT_EQ(ledger_->prune(Clock::now() + std::chrono::seconds(1)), 2u);
  EXPECT_FALSE(ledger_->find({"metro-demo", "a", 1}));
  EXPECT_TRUE(ledger_->runs({"metro-demo", "a", 1}).empty());
  EXPECT_EQ(ledger_->find({"metro-demo", "a", 2})->state, State::kFailed);  // Parked: kept.
  EXPECT_FALSE(ledger_->find({"metro-demo", "a", 3}));
}

TEST(OpenLedger, ExplainsBadUrls) {
  EXPECT_THROW(open_ledger("mysql://x"), InvalidArgument);
  EXPECT_THROW(open_ledger("sqlite:///nonexistent-dir/x/ledger.db"), Error);
  for (auto s : {State::kDeferring, State::kDeadLettered, State::kOrphaned}) {
    EXPECT_EQ(state_from_string(to_string(s)), s);
  }
  EXPECT_EQ(state_from_string("nope"), std::nullopt);
}

}  // namespace
}  // namespace metro::ledger
