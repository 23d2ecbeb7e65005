// The SQLite ledger on a real file.
#include <filesystem>
#include <thread>

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <metro/ledger/ledger.hpp>

#include "../../../src/ledger/sqlite_migrations.hpp"

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

/// Runs SQL on the ledger's file beside the ledger's own connection (as another program would).
void sql(const std::filesystem::path& path, const std::string& text) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* error = nullptr;
  EXPECT_EQ(sqlite3_exec(db, text.c_str(), nullptr, nullptr, &error), SQLITE_OK)
      << (error ? error : "");
  sqlite3_free(error);
  sqlite3_close(db);
}

TEST_F(SqliteLedgerTest, AWriteThatFailsCommitsNothingOfItsOwnAndAllOfTheOthers) {
  // A trigger refuses one subject: the batch holding it must leave no row behind, while a
  // concurrent writer's change in the same group commit is kept.
  sql(path_,
      "CREATE TRIGGER refuse BEFORE INSERT ON deferred_messages WHEN NEW.subject = 'poison'"
      " BEGIN SELECT RAISE(ABORT, 'refused'); END");
  for (int round = 0; round < 20; ++round) {
    auto good = message("a", 1000 + round, "good");
    auto first = message("b", 2000 + round, "s");
    auto poison = message("b", 3000 + round, "poison");
    std::thread other([&] { ledger_->record(good); });
    EXPECT_THROW(ledger_->record_all({first, poison}), Error);
    other.join();
    EXPECT_FALSE(ledger_->find(first.key)) << "a failed write was committed in part";
    EXPECT_TRUE(ledger_->find(good.key));
  }
}

TEST_F(SqliteLedgerTest, FinalStatesAreNeverLeft) {
  auto m = message("a", 1, "s");
  ledger_->record(m);
  EXPECT_TRUE(ledger_->set_state(m.key, State::kCompleted));
  EXPECT_FALSE(ledger_->set_state(m.key, State::kRetrying, "late retry"));
  ledger_->begin_run(m.key, {"h", 2, HandlerRun::Outcome::kRunning, Clock::now(), {}, {}});
  EXPECT_EQ(ledger_->find(m.key)->state, State::kCompleted);
  auto d = message("a", 2, "s");
  ledger_->record(d);
  EXPECT_TRUE(ledger_->set_state(d.key, State::kDeadLettered));
  for (auto s : {State::kDeferred, State::kRunning, State::kRetrying, State::kFailed,
                 State::kCompleted, State::kOrphaned}) {
    EXPECT_FALSE(ledger_->set_state(d.key, s));
  }
  EXPECT_EQ(ledger_->find(d.key)->state, State::kDeadLettered);
}

TEST_F(SqliteLedgerTest, KeepsEveryByteOfSubjectsBodiesAndIds) {
  // NULs, invalid UTF-8 and control characters are data, not terminators.
  for (const auto& subject : {std::string("a\0b", 3), std::string("\xff\xfe", 2),
                              std::string("line\nbreak\r\0", 12), std::string(70000, 's')}) {
    auto m = message("nul", static_cast<std::int64_t>(subject.size()), "x");
    m.subject = subject;
    m.body = "{\"subject\": \"" + subject + "\"}";
    m.correlation_id = subject;
    m.message_id = subject;
    ledger_->record(m);
    auto found = ledger_->find(m.key);
    ASSERT_TRUE(found);
    EXPECT_EQ(found->subject, subject);
    EXPECT_EQ(found->body, m.body);
    EXPECT_EQ(found->correlation_id, subject);
    EXPECT_EQ(found->message_id, subject);
  }
  Query q;
  q.subject_prefix = std::string("a\0", 2);
  auto page = ledger_->list(q);
  ASSERT_EQ(page.items.size(), 1u);
  EXPECT_EQ(page.items[0].subject, std::string("a\0b", 3));
  q.subject_prefix = std::string("a\0c", 3);
  EXPECT_TRUE(ledger_->list(q).items.empty());
}

TEST_F(SqliteLedgerTest, ANewMessageWithAKnownSequenceNumberIsKeptApart) {
  // The subscription's sequence numbers started again: #7 is a different message now.
  auto old = message("a", 7, "Old/Subject");
  old.message_id = "old-id";
  old.enqueued_time = Clock::time_point(std::chrono::milliseconds(1'000'000));
  ledger_->record(old);
  ledger_->record_run(old.key, {"h", 1, HandlerRun::Outcome::kFailed, Clock::now(), {}, "boom"});
  // The same message delivered again is the same record.
  ledger_->record(old);
  EXPECT_EQ(ledger_->runs(old.key).size(), 1u);
  EXPECT_FALSE(ledger_->find({"metro-demo", "a", 7, 1}));
  ledger_->set_state(old.key, State::kFailed, "h: boom");

  auto fresh = message("a", 7, "New/Subject");
  fresh.message_id = "new-id";
  fresh.enqueued_time = Clock::time_point(std::chrono::milliseconds(2'000'000));
  ledger_->record(fresh);
  auto current = ledger_->find(old.key);
  ASSERT_TRUE(current);
  EXPECT_EQ(current->subject, "New/Subject");
  EXPECT_EQ(current->state, State::kDeferring);
  EXPECT_EQ(current->message_id, "new-id");
  EXPECT_TRUE(ledger_->runs(old.key).empty());
  auto earlier = ledger_->find({"metro-demo", "a", 7, 1});
  ASSERT_TRUE(earlier);
  EXPECT_EQ(earlier->subject, "Old/Subject");
  EXPECT_EQ(earlier->state, State::kFailed);
  EXPECT_NE(earlier->last_error.find("superseded"), std::string::npos) << earlier->last_error;
  ASSERT_EQ(ledger_->runs(earlier->key).size(), 1u);
  EXPECT_EQ(ledger_->runs(earlier->key)[0].error, "boom");
  // A third message with that number: generation 2 is the second one, 1 stays the first.
  ledger_->set_state(old.key, State::kCompleted);
  auto third = message("a", 7, "Third");
  third.message_id = "third-id";
  ledger_->record(third);
  EXPECT_EQ(ledger_->find({"metro-demo", "a", 7, 2})->subject, "New/Subject");
  EXPECT_EQ(ledger_->find({"metro-demo", "a", 7, 1})->subject, "Old/Subject");
  EXPECT_EQ(ledger_->find({"metro-demo", "a", 7})->subject, "Third");
  // Listed apart, in order; counted and aged as current records only.
  Query all;
  all.limit = 1;
  std::vector<std::int64_t> generations;
  for (;;) {
    auto page = ledger_->list(all);
    for (auto& m : page.items) generations.push_back(m.key.generation);
    if (!page.next) break;
    all.after = page.next;
  }
  EXPECT_EQ(generations, (std::vector<std::int64_t>{0, 1, 2}));
  Query current_only;
  current_only.current_only = true;
  EXPECT_EQ(ledger_->list(current_only).items.size(), 1u);
  EXPECT_EQ(ledger_->counts()[State::kFailed], 0u);
  EXPECT_EQ(ledger_->counts()[State::kDeferring], 1u);
  // A final record is never the same message again, even without ids to compare.
  ledger_->set_state(third.key, State::kCompleted);
  auto anonymous = message("a", 7, "Fourth");
  anonymous.message_id.clear();
  ledger_->record(anonymous);
  EXPECT_EQ(ledger_->find({"metro-demo", "a", 7})->subject, "Fourth");
  EXPECT_EQ(ledger_->find({"metro-demo", "a", 7, 3})->state, State::kCompleted);
}

TEST_F(SqliteLedgerTest, ADeletedOrReplacedFileIsNoticed) {
  ledger_->record(message("a", 1, "s"));
  EXPECT_FALSE(ledger_->write_problem());
  std::filesystem::remove(path_);
  auto problem = ledger_->write_problem();
  ASSERT_TRUE(problem);
  EXPECT_NE(problem->find("deleted or replaced"), std::string::npos) << *problem;
  EXPECT_THROW(ledger_->record(message("a", 2, "s")), Error);
  EXPECT_FALSE(ledger_->writable());
}

TEST(SqliteLedgerMigrations, ALedgerWrittenByTheFirstSchemaIsMigratedWithNothingLost) {
  // ledger-v0.db was written by metro before schema versions (generated by that code).
  auto path = std::filesystem::temp_directory_path() /
              ("metro-ledger-v0-" + std::to_string(::getpid()) + ".db");
  std::filesystem::copy_file(METRO_SOURCE_DIR "/tests/unit/ledger/fixtures/ledger-v0.db", path,
                             std::filesystem::copy_options::overwrite_existing);
  {
    auto ledger = open_ledger("sqlite://" + path.string());
    auto counts = ledger->counts();
    EXPECT_EQ(counts[State::kCompleted], 1u);
    EXPECT_EQ(counts[State::kDeferred], 1u);
    EXPECT_EQ(counts[State::kFailed], 1u);
    EXPECT_EQ(counts[State::kRunning], 1u);
    auto failed = ledger->find({"orders", "billing", 3});
    ASSERT_TRUE(failed);
    EXPECT_EQ(failed->last_error, "bill: billing is down");
    EXPECT_EQ(failed->correlation_id, "order-3");
    EXPECT_EQ(failed->body, R"({"subject": "Orders/Created", "n": 3})");
    ASSERT_EQ(ledger->runs(failed->key).size(), 1u);
    EXPECT_EQ(ledger->runs(failed->key)[0].error, "billing is down");
    // What the new schema adds works on the old rows.
    auto fresh = *failed;
    fresh.message_id = "another";
    fresh.subject = "Orders/Again";
    ledger->record(fresh);
    EXPECT_EQ(ledger->find({"orders", "billing", 3, 1})->last_error.substr(0, 10), "superseded");
    EXPECT_FALSE(ledger->write_problem());
  }
  {
    // Opening again runs nothing twice.
    auto ledger = open_ledger("sqlite://" + path.string());
    EXPECT_EQ(ledger->find({"orders", "billing", 3})->subject, "Orders/Again");
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, "SELECT max(version), count(*) FROM schema_migrations", -1, &st, nullptr);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  // Every migration ran, once.
  EXPECT_EQ(sqlite3_column_int(st, 0), sqlite_migrations().back().version);
  EXPECT_EQ(sqlite3_column_int(st, 1), static_cast<int>(sqlite_migrations().size()));
  sqlite3_finalize(st);
  sqlite3_close(db);
  for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path.string() + suffix);
}

TEST(SqliteLedgerMigrations, AFileNewerThanThisMetroIsRefused) {
  auto path = std::filesystem::temp_directory_path() /
              ("metro-ledger-new-" + std::to_string(::getpid()) + ".db");
  std::filesystem::remove(path);
  open_ledger("sqlite://" + path.string()).reset();
  sql(path, "INSERT INTO schema_migrations VALUES (99, 'from the future', 0)");
  try {
    open_ledger("sqlite://" + path.string());
    ADD_FAILURE() << "opened a ledger of schema 99";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("newer than this metro knows"), std::string::npos)
        << e.what();
  }
  for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path.string() + suffix);
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
