// The ledger contract: every test runs against the SQLite ledger on a real file and the
// PostgreSQL ledger on a real server (a fresh database per test), so the two behave the same.
// Backend-specific facts (a deleted SQLite file, an unreachable or read-only server) come after.
#include <atomic>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <metro/ledger/ledger.hpp>

#include "../../../src/ledger/failure_groups.hpp"
#include "../../../src/ledger/postgres_migrations.hpp"
#include "../../../src/ledger/sqlite_migrations.hpp"
#include "../../support/postgres_server.hpp"

namespace metro::ledger {
namespace {

enum class Backend { kSqlite, kPostgres };

/// One PostgreSQL server for the whole run of this binary (a database per test).
metro::test::PostgresServer& server() {
  static auto* s = new metro::test::PostgresServer();  // Stopped by its own atexit below.
  static const bool registered = [] {
    std::atexit([] { delete s; });
    return true;
  }();
  (void)registered;
  return *s;
}

using namespace std::chrono_literals;

/// A time as the ledger keeps it (whole milliseconds).
Clock::time_point from_ms_for_test(Clock::time_point t) {
  return Clock::time_point(
      std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()));
}

class LedgerContract : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    auto name = std::string(::testing::UnitTest::GetInstance()->current_test_info()->name());
    for (auto& c : name) {
      if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    }
    if (GetParam() == Backend::kSqlite) {
      path_ = std::filesystem::temp_directory_path() /
              ("metro-ledger-" + std::to_string(::getpid()) + "-" + name + ".db");
      std::filesystem::remove(path_);
      url_ = "sqlite://" + path_.string();
    } else {
      static std::atomic<int> counter{0};
      database_ = "t" + std::to_string(++counter) + "_" + name.substr(0, 40);
      std::transform(database_.begin(), database_.end(), database_.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      server().create_database(database_);
      url_ = server().url(database_);
    }
    ledger_ = open_ledger(url_);
  }
  void TearDown() override {
    ledger_.reset();
    if (GetParam() == Backend::kSqlite) {
      for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path_.string() + suffix);
    }
  }

  bool postgres() const { return GetParam() == Backend::kPostgres; }

  /// Runs SQL on the ledger's store beside the ledger's own connection (as another program
  /// would).
  void raw_sql(const std::string& sqlite_text, const std::string& postgres_text) {
    if (!postgres()) {
      sqlite3* db = nullptr;
      ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
      char* error = nullptr;
      EXPECT_EQ(sqlite3_exec(db, sqlite_text.c_str(), nullptr, nullptr, &error), SQLITE_OK)
          << (error ? error : "");
      sqlite3_free(error);
      sqlite3_close(db);
    } else {
      server().sql(database_, postgres_text);
    }
  }

  std::unique_ptr<Ledger> another() { return open_ledger(url_); }

  DeferredMessage message(const std::string& sub, std::int64_t seq, const std::string& subject) {
    DeferredMessage m;
    m.key = {"metro-demo", sub, seq};
    m.subject = subject;
    m.message_id = "id-" + std::to_string(seq);
    m.correlation_id = "corr-" + std::to_string(seq);
    m.body = R"({"subject":")" + subject + "\"}";
    return m;
  }

  static InstanceInfo instance(const std::string& id, std::chrono::milliseconds lease) {
    InstanceInfo me;
    me.id = id;
    char host[256] = {};
    ::gethostname(host, sizeof(host) - 1);
    me.host = host;
    me.pid = ::getpid();
    me.lease = lease;
    return me;
  }

  /// Records a message that failed `error` in `handler` and is now in `state`.
  void fail(std::int64_t seq, const std::string& handler, const std::string& error,
            State state = State::kFailed, const std::string& sub = "billing") {
    DeferredMessage m;
    m.key = {"orders", sub, seq};
    m.subject = "Orders/Created";
    m.message_id = "m" + std::to_string(seq);
    m.body = "{}";
    m.state = State::kDeferred;
    m.trace_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    ledger_->record(m);
    HandlerRun run;
    run.handler = handler;
    run.outcome = HandlerRun::Outcome::kFailed;
    run.started = Clock::now();
    run.finished = run.started;
    run.error = error;
    ledger_->record_run(m.key, run);
    ledger_->set_state(m.key, state, handler + ": " + error);
  }

  std::filesystem::path path_;
  std::string database_;
  std::string url_;
  std::unique_ptr<Ledger> ledger_;
};

TEST_P(LedgerContract, RecordsIntentThenFollowsStates) {
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

TEST_P(LedgerContract, KeepsTheCeleryTaskIdAndRetriesOfARun) {
  auto m = message("a", 1, "s");
  ledger_->record(m);
  HandlerRun run;
  run.handler = "celery-handler";
  run.started = Clock::now();
  run.task_id = "6f1c0e6a-1b2c-4d5e-8f90-123456789abc";
  ledger_->begin_run(m.key, run);  // Recorded before the task is sent.
  run.retries = 2;
  ledger_->record_run(m.key, run);
  auto runs = ledger_->runs(m.key);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].task_id, run.task_id);
  EXPECT_EQ(runs[0].retries, 2);
  EXPECT_EQ(runs[0].outcome, HandlerRun::Outcome::kRunning);
  run.attempt = 2;
  run.task_id.clear();
  run.retries = 0;
  ledger_->record_run(m.key, run);
  EXPECT_EQ(ledger_->runs(m.key)[1].task_id, "");
  EXPECT_EQ(ledger_->runs(m.key)[1].retries, 0);
}

TEST_P(LedgerContract, KeepsHandlerRunsPerAttempt) {
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

TEST_P(LedgerContract, ListsWithFiltersAndCursorPages) {
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

TEST_P(LedgerContract, SurvivesReopening) {
  ledger_->record(message("a", 1, "s"));
  ledger_->set_state({"metro-demo", "a", 1}, State::kDeferred);
  ledger_.reset();
  ledger_ = open_ledger(url_);
  EXPECT_EQ(ledger_->find({"metro-demo", "a", 1})->state, State::kDeferred);
}

TEST_P(LedgerContract, ConcurrentWritersShareCommitsAndLoseNothing) {
  constexpr int kThreads = 8;
  constexpr int kEach = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        auto m = message("a", t * kEach + i + 1, "s");
        ledger_->record(m);
        ledger_->set_state(m.key, State::kDeferred);
        ledger_->record_run(m.key,
                            {"h", 1, HandlerRun::Outcome::kSucceeded, Clock::now(), {}, {}, {}, 0});
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ledger_->counts()[State::kDeferred], static_cast<std::size_t>(kThreads * kEach));
  EXPECT_EQ(ledger_->runs({"metro-demo", "a", 1}).size(), 1u);
}

TEST_P(LedgerContract, ManyAtOnceAndForgetting) {
  ledger_->record_all({message("a", 1, "s"), message("a", 2, "s"), message("a", 3, "s")});
  EXPECT_EQ(ledger_->set_state_all(
                {{"metro-demo", "a", 1}, {"metro-demo", "a", 2}, {"metro-demo", "a", 9}},
                State::kCompleted),
            2u);
  ledger_->record_run({"metro-demo", "a", 3},
                      {"h", 1, HandlerRun::Outcome::kRunning, Clock::now(), {}, {}, {}, 0});
  EXPECT_TRUE(ledger_->forget({"metro-demo", "a", 3}));
  EXPECT_FALSE(ledger_->forget({"metro-demo", "a", 3}));
  EXPECT_FALSE(ledger_->find({"metro-demo", "a", 3}));
  EXPECT_TRUE(ledger_->runs({"metro-demo", "a", 3}).empty());
  EXPECT_EQ(ledger_->counts()[State::kCompleted], 2u);
}

TEST_P(LedgerContract, PrunesSettledMessagesPastRetention) {
  ledger_->record_all({message("a", 1, "s"), message("a", 2, "s"), message("a", 3, "s")});
  ledger_->set_state({"metro-demo", "a", 1}, State::kCompleted);
  ledger_->set_state({"metro-demo", "a", 2}, State::kFailed);
  ledger_->set_state({"metro-demo", "a", 3}, State::kDeadLettered);
  ledger_->record_run({"metro-demo", "a", 1},
                      {"h", 1, HandlerRun::Outcome::kSucceeded, Clock::now(), {}, {}, {}, 0});
  EXPECT_EQ(ledger_->prune(Clock::now() - std::chrono::hours(1)), 0u);
  EXPECT_EQ(ledger_->prune(Clock::now() + std::chrono::seconds(1)), 2u);
  EXPECT_FALSE(ledger_->find({"metro-demo", "a", 1}));
  EXPECT_TRUE(ledger_->runs({"metro-demo", "a", 1}).empty());
  EXPECT_EQ(ledger_->find({"metro-demo", "a", 2})->state, State::kFailed);  // Parked: kept.
  EXPECT_FALSE(ledger_->find({"metro-demo", "a", 3}));
}

TEST_P(LedgerContract, AWriteThatFailsCommitsNothingOfItsOwnAndAllOfTheOthers) {
  // A trigger refuses one subject: the batch holding it must leave no row behind, while a
  // concurrent writer's change in the same group commit is kept.
  raw_sql(
      "CREATE TRIGGER refuse BEFORE INSERT ON deferred_messages WHEN NEW.subject = 'poison'"
      " BEGIN SELECT RAISE(ABORT, 'refused'); END",
      "CREATE FUNCTION refuse() RETURNS trigger AS \\$\\$ BEGIN IF NEW.subject = 'poison'::bytea"
      " THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END \\$\\$ LANGUAGE plpgsql;"
      " CREATE TRIGGER refuse BEFORE INSERT ON deferred_messages FOR EACH ROW EXECUTE FUNCTION"
      " refuse()");
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

TEST_P(LedgerContract, FinalStatesAreNeverLeft) {
  auto m = message("a", 1, "s");
  ledger_->record(m);
  EXPECT_TRUE(ledger_->set_state(m.key, State::kCompleted));
  EXPECT_FALSE(ledger_->set_state(m.key, State::kRetrying, "late retry"));
  ledger_->begin_run(m.key, {"h", 2, HandlerRun::Outcome::kRunning, Clock::now(), {}, {}, {}, 0});
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

TEST_P(LedgerContract, KeepsEveryByteOfSubjectsBodiesAndIds) {
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

TEST_P(LedgerContract, ANewMessageWithAKnownSequenceNumberIsKeptApart) {
  // The subscription's sequence numbers started again: #7 is a different message now.
  auto old = message("a", 7, "Old/Subject");
  old.message_id = "old-id";
  old.enqueued_time = Clock::time_point(std::chrono::milliseconds(1'000'000));
  ledger_->record(old);
  ledger_->record_run(old.key,
                      {"h", 1, HandlerRun::Outcome::kFailed, Clock::now(), {}, "boom", {}, 0});
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

TEST_P(LedgerContract, GlobsMatchTheWholeSubjectAsSqliteGlobDoes) {
  int seq = 0;
  for (auto subject : {"Orders/Created", "Orders/Paid", "Billing/x", "a.b(c)"}) {
    ledger_->record(message("g", ++seq, subject));
  }
  auto count = [&](const std::string& glob) {
    Query q;
    q.subject_glob = glob;
    return ledger_->list(q).items.size();
  };
  EXPECT_EQ(count("Orders/*"), 2u);
  EXPECT_EQ(count("Orders/[CP]*"), 2u);
  EXPECT_EQ(count("Orders/[^C]*"), 1u);
  EXPECT_EQ(count("*x"), 1u);
  EXPECT_EQ(count("Orders/?aid"), 1u);
  EXPECT_EQ(count("a.b(c)"), 1u);
  EXPECT_EQ(count("a?b(c)"), 1u);
  EXPECT_EQ(count("Orders"), 0u);
}

TEST_P(LedgerContract, AJoinedInstanceOwnsWhatItRecordsUnderALease) {
  ledger_->record(message("a", 1, "s"));
  EXPECT_EQ(ledger_->find({"metro-demo", "a", 1})->owner, "");
  ledger_->join(instance("alpha", std::chrono::seconds(30)));
  EXPECT_EQ(ledger_->instance_id(), "alpha");
  ledger_->record(message("a", 2, "s"));
  auto row = ledger_->find({"metro-demo", "a", 2});
  EXPECT_EQ(row->owner, "alpha");
  EXPECT_GT(row->lease_until, Clock::now() + std::chrono::seconds(20));
  // Parking lets the lease go (nobody is working on it); the owner stays on record.
  EXPECT_TRUE(ledger_->set_state(row->key, State::kFailed, "boom"));
  row = ledger_->find(row->key);
  EXPECT_EQ(row->owner, "alpha");
  EXPECT_EQ(row->lease_until, Clock::time_point{});
  ledger_->heartbeat(3);
  auto instances = ledger_->instances();
  ASSERT_EQ(instances.size(), 1u);
  EXPECT_EQ(instances[0].id, "alpha");
  EXPECT_EQ(instances[0].in_flight, 3u);
  EXPECT_TRUE(instances[0].live);
  EXPECT_EQ(ledger_->find(row->key)->lease_until, Clock::time_point{});  // Not renewed.
  ledger_->leave();
  EXPECT_TRUE(ledger_->instances().empty());
}

TEST_P(LedgerContract, OnlyTheOwnerMovesARowToAStateThatIsNotFinal) {
  ledger_->join(instance("alpha", std::chrono::seconds(30)));
  auto theirs = message("a", 1, "s");
  theirs.state = State::kRunning;
  theirs.owner = "beta";
  theirs.lease_until = Clock::now() + std::chrono::hours(1);
  theirs.created = theirs.updated = Clock::now();
  ledger_->restore({{theirs, {}}});
  // beta holds it: alpha's late writes are fenced off, and alpha cannot take it.
  EXPECT_FALSE(ledger_->set_state(theirs.key, State::kRetrying, "late"));
  EXPECT_FALSE(ledger_->forget(theirs.key));
  EXPECT_FALSE(ledger_->claim_one(theirs.key));
  EXPECT_EQ(ledger_->find(theirs.key)->state, State::kRunning);
  // Settling is a fact from Service Bus: any instance records it.
  EXPECT_TRUE(ledger_->set_state(theirs.key, State::kCompleted));
  // A lapsed lease is anyone's to take; then the taker owns it.
  auto lapsed = message("a", 2, "s");
  lapsed.state = State::kDeferred;
  lapsed.owner = "beta";
  lapsed.lease_until = Clock::now() - std::chrono::seconds(1);
  lapsed.created = lapsed.updated = Clock::now();
  ledger_->restore({{lapsed, {}}});
  auto taken = ledger_->claim_one(lapsed.key);
  ASSERT_TRUE(taken);
  EXPECT_EQ(taken->owner, "alpha");
  EXPECT_TRUE(ledger_->set_state(lapsed.key, State::kRetrying));
  EXPECT_FALSE(ledger_->claim_one({"metro-demo", "a", 99}));
}

TEST_P(LedgerContract, ClaimsOwnUnownedAndLapsedRowsInSequenceOrderNeverOthersLiveOnes) {
  auto row = [&](std::int64_t seq, const std::string& owner, std::chrono::seconds lease,
                 State state) {
    auto m = message("c", seq, "s");
    m.owner = owner;
    m.state = state;
    m.lease_until = owner.empty() ? Clock::time_point{} : Clock::now() + lease;
    m.created = m.updated = Clock::now() - std::chrono::minutes(10);
    return std::pair{m, std::vector<HandlerRun>{}};
  };
  ledger_->restore({row(1, "", std::chrono::seconds(0), State::kDeferred),
                    row(2, "beta", std::chrono::seconds(3600), State::kDeferred),
                    row(3, "beta", std::chrono::seconds(-5), State::kRunning),
                    row(4, "alpha", std::chrono::seconds(3600), State::kRetrying),
                    row(5, "", std::chrono::seconds(0), State::kFailed),
                    row(6, "gamma", std::chrono::seconds(-5), State::kDeferred)});
  // Joining a SQLite file makes every other holder gone (one process per file): beta's live
  // lease lapses too there. On PostgreSQL beta may be alive and keeps #2.
  ledger_->join(instance("alpha", std::chrono::seconds(30)));
  Claim c;
  c.topic = "metro-demo";
  c.subscription = "c";
  c.states = {State::kDeferred, State::kRunning, State::kRetrying};
  c.limit = 2;
  std::vector<std::int64_t> got;
  for (;;) {
    auto page = ledger_->claim(c);
    if (page.empty()) break;
    for (auto& m : page) {
      EXPECT_EQ(ledger_->find(m.key)->owner, "alpha");
      got.push_back(m.key.sequence_number);
    }
    c.after = page.back().key.sequence_number;
  }
  if (postgres()) {
    EXPECT_EQ(got, (std::vector<std::int64_t>{1, 3, 4, 6}));
    EXPECT_EQ(ledger_->find({"metro-demo", "c", 2})->owner, "beta");
  } else {
    EXPECT_EQ(got, (std::vector<std::int64_t>{1, 2, 3, 4, 6}));
  }
  // Own rows only when stale; others' only when lapsed.
  c.after = 0;
  c.own_updated_before = Clock::now() - std::chrono::hours(1);
  EXPECT_TRUE(ledger_->claim(c).empty());
}

TEST_P(LedgerContract, RestoreAndCopyKeepEveryFieldGenerationAndRun) {
  auto old = message("a", 7, "Old");
  old.message_id = "old";
  old.trace_parent = std::string("00-trace\0\xff", 11);
  ledger_->record(old);
  ledger_->record_run(old.key, {"h", 1, HandlerRun::Outcome::kFailed, Clock::now(), Clock::now(),
                                std::string("err\0or", 6), "task-7", 3});
  auto fresh = message("a", 7, "New");
  fresh.message_id = "new";
  ledger_->record(fresh);
  ledger_->set_state(fresh.key, State::kFailed, "parked");
  auto target_path = std::filesystem::temp_directory_path() /
                     ("metro-ledger-copy-" + std::to_string(::getpid()) + ".db");
  std::filesystem::remove(target_path);
  {
    auto target = open_ledger("sqlite://" + target_path.string());
    EXPECT_EQ(copy_ledger(*ledger_, *target), 2u);
    for (auto key : {MessageKey{"metro-demo", "a", 7, 0}, MessageKey{"metro-demo", "a", 7, 1}}) {
      auto a = ledger_->find(key);
      auto b = target->find(key);
      ASSERT_TRUE(a && b);
      EXPECT_EQ(a->subject, b->subject);
      EXPECT_EQ(a->state, b->state);
      EXPECT_EQ(a->last_error, b->last_error);
      EXPECT_EQ(a->created, b->created);
      EXPECT_EQ(a->updated, b->updated);
      EXPECT_EQ(a->message_id, b->message_id);
      EXPECT_EQ(a->trace_parent, b->trace_parent);
      EXPECT_EQ(a->failure_group, b->failure_group);
      ASSERT_EQ(ledger_->runs(key).size(), target->runs(key).size());
    }
    EXPECT_EQ(target->runs({"metro-demo", "a", 7, 1}).at(0).error, std::string("err\0or", 6));
    EXPECT_EQ(target->runs({"metro-demo", "a", 7, 1}).at(0).task_id, "task-7");
    EXPECT_EQ(target->runs({"metro-demo", "a", 7, 1}).at(0).retries, 3);
    EXPECT_EQ(target->find({"metro-demo", "a", 7, 1})->trace_parent,
              std::string("00-trace\0\xff", 11));
    EXPECT_FALSE(target->find({"metro-demo", "a", 7, 1})->failure_group.empty());
    EXPECT_EQ(copy_ledger(*ledger_, *target), 2u);  // Again: the same rows, replaced.
    EXPECT_EQ(target->counts()[State::kFailed], 1u);
  }
  for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(target_path.string() + suffix);
}

// ---- trace context, failure groups and bulk jobs ----------------------------------------------

TEST_P(LedgerContract, GroupsFailedAndRetryingMessagesWithExactCounts) {
  for (int i = 1; i <= 30; ++i) fail(i, "bill.sh", "order " + std::to_string(i * 7) + " unknown");
  for (int i = 31; i <= 40; ++i) {
    fail(i, "bill.sh", "db at 10.0.0." + std::to_string(i) + " refused", State::kRetrying);
  }
  fail(41, "ship.sh", "order 1 unknown");                     // Another handler: another group.
  fail(42, "bill.sh", "order 2 unknown", State::kCompleted);  // Settled: in no group.
  auto groups = ledger_->failure_groups({});
  ASSERT_EQ(groups.size(), 3u);
  EXPECT_EQ(groups[0].count, 30u);
  EXPECT_EQ(groups[0].failed, 30u);
  EXPECT_EQ(groups[0].handler, "bill.sh");
  EXPECT_EQ(groups[0].error, "order <n> unknown");
  EXPECT_EQ(groups[0].id, failure_group_id("orders", "billing", "bill.sh", "order <n> unknown"));
  EXPECT_EQ(groups[0].topic, "orders");
  EXPECT_EQ(groups[0].subscription, "billing");
  EXPECT_EQ(groups[0].sample_error.rfind("bill.sh: order ", 0), 0u);
  EXPECT_EQ(groups[0].sample_subject, "Orders/Created");
  EXPECT_LE(groups[0].first_seen, groups[0].last_seen);
  EXPECT_EQ(groups[1].count, 10u);
  EXPECT_EQ(groups[1].retrying, 10u);
  EXPECT_EQ(groups[2].handler, "ship.sh");

  // The list and the count by group, as bulk actions take them.
  Query q;
  q.failure_group = groups[0].id;
  q.limit = 1000;
  EXPECT_EQ(ledger_->list(q).items.size(), 30u);
  EXPECT_EQ(ledger_->count(q), 30u);
  q.failure_group = "not a group \xff";
  EXPECT_EQ(ledger_->count(q), 0u);
  Query either;
  either.any_state = {State::kRetrying, State::kCompleted};
  EXPECT_EQ(ledger_->count(either), 11u);
  either.topic = "orders";
  either.state = State::kCompleted;
  EXPECT_EQ(ledger_->count(either), 1u);
  EXPECT_EQ(ledger_->find({"orders", "billing", 1})->failure_group, groups[0].id);
  EXPECT_EQ(ledger_->find({"orders", "billing", 1})->trace_parent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  EXPECT_EQ(ledger_->list(Query{}).items.at(0).trace_parent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");

  FailureQuery other;
  other.subscription = "shipping";
  EXPECT_TRUE(ledger_->failure_groups(other).empty());
  FailureQuery one;
  one.topic = "orders";
  one.limit = 1;
  EXPECT_EQ(ledger_->failure_groups(one).size(), 1u);
}

TEST_P(LedgerContract, KeepsTheFirstTraceContextAndEveryByteOfIt) {
  auto m = message("a", 1, "s");
  m.trace_parent = std::string("00-\0\xff-01", 7);
  ledger_->record(m);
  m.trace_parent = "00-another";
  m.state = State::kDeferred;
  ledger_->record(m);  // The same message again: its trace context stays.
  EXPECT_EQ(ledger_->find(m.key)->trace_parent, std::string("00-\0\xff-01", 7));
}

TEST_P(LedgerContract, ListsFailureGroupsWithAHundredThousandParkedRows) {
  // Written straight into the store in one statement (record_run per row would take minutes):
  // every tenth row settled (not counted), the rest in 32 groups.
  constexpr int kRows = 100000;
  const std::string group =
      "(CASE WHEN i % 32 >= 16 THEN '1' ELSE '0' END) || '00000000000000' ||"
      " substr('0123456789abcdef', i % 16 + 1, 1)";
  const std::string state = "CASE WHEN i % 10 = 0 THEN 'completed' ELSE 'failed' END";
  ledger_.reset();
  raw_sql("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < " +
              std::to_string(kRows) +
              ") INSERT INTO deferred_messages (topic, subscription, sequence_number, generation,"
              " subject, message_id, correlation_id, body, body_truncated, state, created,"
              " updated, last_error, enqueued, failure_group, failure_handler, failure_error,"
              " failure_at) SELECT 'orders', 'billing', i, 0, 'Orders/X', '', '', '{}', 0, " +
              state + ", i, i, 'h: e', 0, " + group + ", 'h', 'e', i FROM n",
          "INSERT INTO deferred_messages (topic, subscription, sequence_number, generation,"
          " subject, subject_text, message_id, correlation_id, body, body_truncated, state,"
          " created, updated, last_error, enqueued, failure_group, failure_handler,"
          " failure_error, failure_at) SELECT 'orders', 'billing', i, 0, 'Orders/X'::bytea,"
          " 'Orders/X', ''::bytea, ''::bytea, '{}'::bytea, 0, " +
              state + ", i, i, 'h: e'::bytea, 0, " + group +
              ", 'h', 'e'::bytea, i FROM generate_series(1, " + std::to_string(kRows) +
              ") AS i; ANALYZE deferred_messages");
  ledger_ = another();

  auto start = std::chrono::steady_clock::now();
  auto groups = ledger_->failure_groups({});
  auto took = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start);
  std::size_t total = 0;
  for (const auto& g : groups) total += g.count;
  EXPECT_EQ(groups.size(), 32u);
  EXPECT_EQ(total, static_cast<std::size_t>(kRows - kRows / 10));
  Query q;
  q.failure_group = groups.front().id;
  start = std::chrono::steady_clock::now();
  auto counted = ledger_->count(q);
  auto count_took =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start);
  EXPECT_EQ(counted, groups.front().count);
  // A job over every parked message keeps 90,000 keys, in one commit.
  Job job;
  job.id = "00000000000000aa";
  job.filter = "{}";
  Query parked;
  parked.state = State::kFailed;
  start = std::chrono::steady_clock::now();
  auto created = ledger_->create_job(job, parked);
  auto job_took =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start);
  EXPECT_EQ(created.total, total);
  EXPECT_EQ(ledger_->job_pending(job.id, 10).size(), 10u);
  // Figures for the README, not assertions: the machine is shared.
  std::cout << (postgres() ? "postgres" : "sqlite") << ": failure_groups over " << kRows
            << " rows (" << total << " parked, " << groups.size() << " groups): " << took.count()
            << " ms; count of one group: " << count_took.count()
            << " ms; a job over all parked: " << job_took.count() << " ms\n";
}

TEST_P(LedgerContract, FilesRowsParkedBeforeGroupsExistedAtOpen) {
  fail(1, "bill.sh", "order 5 unknown");
  ledger_.reset();
  raw_sql("UPDATE deferred_messages SET failure_group = ''",
          "UPDATE deferred_messages SET failure_group = ''");
  ledger_ = another();
  auto groups = ledger_->failure_groups({});
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_EQ(groups[0].id, failure_group_id("orders", "billing", "bill.sh", "order <n> unknown"));
}

TEST_P(LedgerContract, JobsKeepTheirKeysProgressAndStateAcrossReopening) {
  for (int i = 1; i <= 5; ++i) fail(i, "bill.sh", "order 1 unknown");
  fail(6, "bill.sh", "order 1 unknown", State::kCompleted);
  Job job;
  job.id = "0123456789abcdef";
  job.action = JobAction::kDeadLetter;
  job.filter = R"({"state":"failed"})";
  job.reason = std::string("why\0\xff", 5);
  job.created_by = "ops";
  Query q;
  q.state = State::kFailed;
  auto created = ledger_->create_job(job, q);
  EXPECT_EQ(created.total, 5u);
  EXPECT_EQ(created.state, JobState::kQueued);
  auto pending = ledger_->job_pending(job.id, 2);
  ASSERT_EQ(pending.size(), 2u);
  EXPECT_EQ(pending[0].sequence_number, 1);
  ledger_->record_job_items(job.id,
                            {{pending[0], true, {}}, {pending[1], false, std::string("bu\0sy", 5)}});
  ledger_->record_job_items(job.id, {{pending[0], true, {}}});  // Twice: counted once.
  EXPECT_TRUE(ledger_->set_job_state(job.id, JobState::kRunning));

  ledger_.reset();
  ledger_ = another();
  auto found = ledger_->find_job(job.id);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->action, JobAction::kDeadLetter);
  EXPECT_EQ(found->reason, std::string("why\0\xff", 5));
  EXPECT_EQ(found->filter, R"({"state":"failed"})");
  EXPECT_EQ(found->created_by, "ops");
  EXPECT_EQ(found->total, 5u);
  EXPECT_EQ(found->done, 1u);
  EXPECT_EQ(found->failed, 1u);
  EXPECT_EQ(found->state, JobState::kRunning);
  EXPECT_FALSE(found->finished);
  EXPECT_EQ(ledger_->job_pending(job.id, 100).size(), 3u);
  ASSERT_EQ(ledger_->job_failures(job.id, 10).size(), 1u);
  EXPECT_EQ(ledger_->job_failures(job.id, 10)[0].error, std::string("bu\0sy", 5));
  EXPECT_EQ(ledger_->jobs(10, true).size(), 1u);
  EXPECT_FALSE(ledger_->find_job("no such job"));
  EXPECT_FALSE(ledger_->find_job("\xff\x01"));
  EXPECT_FALSE(ledger_->set_job_state("\xff\x01", JobState::kCancelled));
  EXPECT_TRUE(ledger_->set_job_state(job.id, JobState::kCancelled, "cancelled by ops"));
  EXPECT_FALSE(ledger_->set_job_state(job.id, JobState::kCompleted));  // Final states stay.
  found = ledger_->find_job(job.id);
  EXPECT_EQ(found->state, JobState::kCancelled);
  EXPECT_TRUE(found->finished);
  EXPECT_EQ(found->error, "cancelled by ops");
  EXPECT_TRUE(ledger_->jobs(10, true).empty());
  EXPECT_EQ(ledger_->jobs(10, false).size(), 1u);
  // Retention: finished jobs go with settled rows.
  ledger_->prune(Clock::now() + std::chrono::hours(1));
  EXPECT_FALSE(ledger_->find_job(job.id));
}

TEST_P(LedgerContract, TheSchemaIsUpToDateAndSaysSo) {
  auto migrations = ledger_->migrations();
  ASSERT_FALSE(migrations.empty());
  for (const auto& m : migrations) EXPECT_TRUE(m.applied) << m.version;
  EXPECT_TRUE(pending_migrations(url_).empty());
}

// ---- lean completed rows, retention -------------------------------------------------------

/// A message with three runs: handler a failed once then succeeded, handler b succeeded.
void run_three(Ledger& ledger, const MessageKey& key, Clock::time_point t0) {
  using Outcome = HandlerRun::Outcome;
  ledger.begin_run(key, {"a", 1, Outcome::kRunning, t0, {}, {}, {}, 0});
  ledger.record_run(key, {"a", 1, Outcome::kFailed, t0, t0 + 5ms, "a: boom 1", {}, 0});
  ledger.begin_run(key, {"a", 2, Outcome::kRunning, t0 + 10ms, {}, {}, {}, 0});
  ledger.record_run(key, {"a", 2, Outcome::kSucceeded, t0 + 10ms, t0 + 17ms, {}, "task-2", 1});
  ledger.record_run(key, {"b", 1, Outcome::kSucceeded, t0 + 20ms, t0 + 21ms, {}, {}, 0});
}

TEST_P(LedgerContract, ALeanCompletionDropsTheBodyAndMovesTheRunsOntoTheRow) {
  auto m = message("a", 1, "Orders/Created");
  m.trace_parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  ledger_->record(m);
  auto t0 = from_ms_for_test(Clock::now());
  run_three(*ledger_, m.key, t0);
  ASSERT_TRUE(ledger_->set_state(m.key, State::kCompleted));
  auto found = ledger_->find(m.key);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->state, State::kCompleted);
  EXPECT_TRUE(found->body_dropped);
  EXPECT_EQ(found->body, "");
  // What names the message stays.
  EXPECT_EQ(found->subject, m.subject);
  EXPECT_EQ(found->message_id, m.message_id);
  EXPECT_EQ(found->correlation_id, m.correlation_id);
  EXPECT_EQ(found->trace_parent, m.trace_parent);
  // Every run stays, as it was recorded, in the order they started.
  auto runs = ledger_->runs(m.key);
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[0].handler, "a");
  EXPECT_EQ(runs[0].attempt, 1);
  EXPECT_EQ(runs[0].outcome, HandlerRun::Outcome::kFailed);
  EXPECT_EQ(runs[0].error, "a: boom 1");
  EXPECT_EQ(runs[1].handler, "a");
  EXPECT_EQ(runs[1].attempt, 2);
  EXPECT_EQ(runs[1].outcome, HandlerRun::Outcome::kSucceeded);
  EXPECT_EQ(runs[1].started, t0 + 10ms);
  EXPECT_EQ(runs[1].finished, t0 + 17ms);
  EXPECT_EQ(runs[1].task_id, "task-2");
  EXPECT_EQ(runs[1].retries, 1);
  EXPECT_EQ(runs[2].handler, "b");
  EXPECT_EQ(runs[2].attempt, 1);
  // Listed and counted as before, flagged in the listing too.
  auto page = ledger_->list({});
  ASSERT_EQ(page.items.size(), 1u);
  EXPECT_TRUE(page.items[0].body_dropped);
  EXPECT_EQ(ledger_->counts()[State::kCompleted], 1u);
  // A run that ends after its message completed (explicit completion) joins the others.
  ledger_->record_run(m.key, {"c",
                              1,
                              HandlerRun::Outcome::kSucceeded,
                              t0 + 30ms,
                              t0 + 31ms,
                              std::string("x\0y", 3),
                              {},
                              0});
  ledger_->record_run(m.key,
                      {"b", 1, HandlerRun::Outcome::kSucceeded, t0 + 20ms, t0 + 25ms, {}, {}, 0});
  runs = ledger_->runs(m.key);
  ASSERT_EQ(runs.size(), 4u);
  EXPECT_EQ(runs[2].handler, "b");
  EXPECT_EQ(runs[2].finished, t0 + 25ms);
  EXPECT_EQ(runs[3].handler, "c");
  EXPECT_EQ(runs[3].error, std::string("x\0y", 3));
  // Completing again changes nothing.
  EXPECT_FALSE(ledger_->set_state(m.key, State::kCompleted));
  EXPECT_EQ(ledger_->runs(m.key).size(), 4u);
}

TEST_P(LedgerContract, RowsNotCompletedKeepTheirBodyAndEveryRun) {
  auto t0 = from_ms_for_test(Clock::now());
  for (auto [seq, state] : {std::pair{1, State::kFailed}, std::pair{2, State::kDeadLettered},
                            std::pair{3, State::kRetrying}, std::pair{4, State::kDeferred},
                            std::pair{5, State::kOrphaned}}) {
    auto m = message("a", seq, "s");
    ledger_->record(m);
    run_three(*ledger_, m.key, t0);
    ASSERT_TRUE(ledger_->set_state(m.key, state, "why"));
    auto found = ledger_->find(m.key);
    ASSERT_TRUE(found);
    EXPECT_EQ(found->body, m.body) << to_string(state);
    EXPECT_FALSE(found->body_dropped) << to_string(state);
    EXPECT_EQ(ledger_->runs(m.key).size(), 3u) << to_string(state);
  }
}

TEST_P(LedgerContract, FullCompletedRowsKeepEverything) {
  OpenOptions options;
  options.completed_rows = CompletedRows::kFull;
  ledger_ = open_ledger(url_, options);
  auto m = message("a", 1, "s");
  ledger_->record(m);
  run_three(*ledger_, m.key, from_ms_for_test(Clock::now()));
  ASSERT_TRUE(ledger_->set_state(m.key, State::kCompleted));
  auto found = ledger_->find(m.key);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->body, m.body);
  EXPECT_FALSE(found->body_dropped);
  EXPECT_EQ(ledger_->runs(m.key).size(), 3u);
}

TEST_P(LedgerContract, ALeanRowIsCopiedWithItsRunsAndItsFlag) {
  auto m = message("a", 1, "s");
  ledger_->record(m);
  run_three(*ledger_, m.key, from_ms_for_test(Clock::now()));
  ledger_->set_state(m.key, State::kCompleted);
  auto target_path = std::filesystem::temp_directory_path() /
                     ("metro-ledger-lean-copy-" + std::to_string(::getpid()) + ".db");
  std::filesystem::remove(target_path);
  {
    auto target = open_ledger("sqlite://" + target_path.string());
    EXPECT_EQ(copy_ledger(*ledger_, *target), 1u);
    auto copied = target->find(m.key);
    ASSERT_TRUE(copied);
    EXPECT_TRUE(copied->body_dropped);
    EXPECT_EQ(copied->body, "");
    EXPECT_EQ(target->runs(m.key).size(), 3u);
  }
  for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(target_path.string() + suffix);
}

TEST_P(LedgerContract, CompletedRowsHaveARetentionOfTheirOwn) {
  ledger_->record_all(
      {message("a", 1, "s"), message("a", 2, "s"), message("a", 3, "s"), message("a", 4, "s")});
  ledger_->set_state({"metro-demo", "a", 1}, State::kCompleted);
  ledger_->set_state({"metro-demo", "a", 2}, State::kDeadLettered);
  ledger_->set_state({"metro-demo", "a", 3}, State::kFailed);
  // A new message with sequence number 4: the earlier record is superseded (generation 1).
  auto again = message("a", 4, "s");
  again.message_id = "another";
  ledger_->record(again);
  ASSERT_TRUE(ledger_->find({"metro-demo", "a", 4, 1}));
  auto past = Clock::now() - std::chrono::hours(1);
  auto future = Clock::now() + std::chrono::seconds(1);
  // Completed rows past their retention go; dead-lettered and superseded ones are younger than
  // theirs.
  EXPECT_EQ(ledger_->prune(past, future), 1u);
  EXPECT_FALSE(ledger_->find({"metro-demo", "a", 1}));
  EXPECT_TRUE(ledger_->find({"metro-demo", "a", 2}));
  EXPECT_TRUE(ledger_->find({"metro-demo", "a", 4, 1}));
  // And the other way round.
  ledger_->set_state({"metro-demo", "a", 4}, State::kCompleted);
  EXPECT_EQ(ledger_->prune(future, past), 2u);
  EXPECT_FALSE(ledger_->find({"metro-demo", "a", 2}));
  EXPECT_FALSE(ledger_->find({"metro-demo", "a", 4, 1}));
  EXPECT_EQ(ledger_->find({"metro-demo", "a", 4})->state, State::kCompleted);
  EXPECT_EQ(ledger_->find({"metro-demo", "a", 3})->state, State::kFailed);  // Never pruned.
  // The epoch as a cutoff keeps everything (a retention of 0).
  EXPECT_EQ(ledger_->prune(Clock::time_point{}, Clock::time_point{}), 0u);
}

TEST_P(LedgerContract, PruningManyRowsTakesThemAllWithTheirRuns) {
  // More than one batch of the prune's.
  OpenOptions options;
  options.completed_rows = CompletedRows::kFull;
  ledger_ = open_ledger(url_, options);
  constexpr int kRows = 4500;
  std::vector<DeferredMessage> rows;
  std::vector<MessageKey> keys;
  for (int i = 1; i <= kRows; ++i) {
    rows.push_back(message("a", i, "s"));
    keys.push_back(rows.back().key);
  }
  ledger_->record_all(rows);
  ledger_->record_run(keys.front(),
                      {"h", 1, HandlerRun::Outcome::kSucceeded, Clock::now(), {}, {}, {}, 0});
  ledger_->record_run(keys.back(),
                      {"h", 1, HandlerRun::Outcome::kSucceeded, Clock::now(), {}, {}, {}, 0});
  EXPECT_EQ(ledger_->set_state_all(keys, State::kCompleted), static_cast<std::size_t>(kRows));
  auto future = Clock::now() + std::chrono::seconds(1);
  EXPECT_EQ(ledger_->prune(future, future), static_cast<std::size_t>(kRows));
  EXPECT_EQ(ledger_->counts()[State::kCompleted], 0u);
  EXPECT_TRUE(ledger_->runs(keys.front()).empty());
  EXPECT_TRUE(ledger_->runs(keys.back()).empty());
}

TEST_P(LedgerContract, WritesAndTheirCommitsAreCounted) {
  auto before = ledger_->write_stats();
  ledger_->record(message("a", 1, "s"));
  ledger_->set_state({"metro-demo", "a", 1}, State::kDeferred);
  auto after = ledger_->write_stats();
  EXPECT_EQ(after.writes - before.writes, 2u);
  EXPECT_EQ(after.commits - before.commits, 2u);
  // Writers at once share commits: never more commits than writes.
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) ledger_->record(message("b", t * 100 + i, "s"));
    });
  }
  for (auto& w : writers) w.join();
  auto end = ledger_->write_stats();
  EXPECT_EQ(end.writes - after.writes, 80u);
  EXPECT_LE(end.commits - after.commits, 80u);
  EXPECT_GE(end.commits - after.commits, 1u);
}

std::string backend_name(const ::testing::TestParamInfo<Backend>& info) {
  return info.param == Backend::kSqlite ? "sqlite" : "postgres";
}
INSTANTIATE_TEST_SUITE_P(Sqlite, LedgerContract, ::testing::Values(Backend::kSqlite), backend_name);
INSTANTIATE_TEST_SUITE_P(Postgres, LedgerContract, ::testing::Values(Backend::kPostgres),
                         backend_name);

// ---- SQLite alone ----------------------------------------------------------------------------

TEST_P(LedgerContract, ADeletedOrReplacedFileIsNoticed) {
  if (postgres()) GTEST_SKIP() << "a SQLite file";
  ledger_->record(message("a", 1, "s"));
  EXPECT_FALSE(ledger_->write_problem());
  std::filesystem::remove(path_);
  auto problem = ledger_->write_problem();
  ASSERT_TRUE(problem);
  EXPECT_NE(problem->find("deleted or replaced"), std::string::npos) << *problem;
  EXPECT_THROW(ledger_->record(message("a", 2, "s")), Error);
  EXPECT_FALSE(ledger_->writable());
}

TEST_P(LedgerContract, TheFileStopsGrowingOncePruningKeepsUp) {
  if (postgres()) GTEST_SKIP() << "a SQLite file";
  // Rounds of messages completed then pruned: the pages freed by a round are used by the next.
  auto page_count = [&] {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", nullptr, nullptr, nullptr);
    sqlite3_stmt* s = nullptr;
    sqlite3_prepare_v2(db, "PRAGMA page_count", -1, &s, nullptr);
    std::int64_t pages = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_finalize(s);
    sqlite3_close(db);
    return pages;
  };
  std::int64_t seq = 0;
  auto round = [&] {
    std::vector<DeferredMessage> rows;
    std::vector<MessageKey> keys;
    for (int i = 0; i < 2000; ++i) {
      rows.push_back(message("a", ++seq, "s"));
      keys.push_back(rows.back().key);
    }
    ledger_->record_all(rows);
    for (const auto& k : keys) {
      ledger_->record_run(
          k, {"h", 1, HandlerRun::Outcome::kSucceeded, Clock::now(), Clock::now(), {}, {}, 0});
    }
    ledger_->set_state_all(keys, State::kCompleted);
    auto future = Clock::now() + std::chrono::seconds(1);
    EXPECT_EQ(ledger_->prune(future, future), keys.size());
  };
  round();
  auto first = page_count();
  for (int i = 0; i < 3; ++i) round();
  EXPECT_LE(page_count(), first + 2) << "after one round: " << first;
}

/// Runs SQL on a SQLite file (as another program would).
void sqlite_sql(const std::filesystem::path& path, const std::string& text) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* error = nullptr;
  EXPECT_EQ(sqlite3_exec(db, text.c_str(), nullptr, nullptr, &error), SQLITE_OK)
      << (error ? error : "");
  sqlite3_free(error);
  sqlite3_close(db);
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
  const auto& migrations = sqlite_migrations();
  EXPECT_EQ(sqlite3_column_int(st, 0), migrations.back().version);
  EXPECT_EQ(sqlite3_column_int(st, 1), static_cast<int>(migrations.size()));
  sqlite3_finalize(st);
  sqlite3_close(db);
  for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path.string() + suffix);
}

TEST(SqliteLedgerMigrations, AFileNewerThanThisMetroIsRefused) {
  auto path = std::filesystem::temp_directory_path() /
              ("metro-ledger-new-" + std::to_string(::getpid()) + ".db");
  std::filesystem::remove(path);
  open_ledger("sqlite://" + path.string()).reset();
  sqlite_sql(path, "INSERT INTO schema_migrations VALUES (99, 'from the future', 0)");
  try {
    open_ledger("sqlite://" + path.string());
    ADD_FAILURE() << "opened a ledger of schema 99";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("newer than this metro knows"), std::string::npos)
        << e.what();
  }
  for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path.string() + suffix);
}

TEST(SqliteLedgerInstances, ASecondLiveProcessOnOneFileIsRefusedWithTheReason) {
  auto path = std::filesystem::temp_directory_path() /
              ("metro-ledger-two-" + std::to_string(::getpid()) + ".db");
  for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path.string() + suffix);
  open_ledger("sqlite://" + path.string()).reset();
  // Another process (pid 1 is alive on every host) joined a moment ago.
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  auto now = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
                 .count();
  sqlite_sql(path, "INSERT INTO instances VALUES ('other', '" + std::string(host) + "', 1, " +
                       std::to_string(now) + ", " + std::to_string(now) + ", 0, 30000)");
  auto ledger = open_ledger("sqlite://" + path.string());
  InstanceInfo me{"me", host, ::getpid(), std::chrono::seconds(30)};
  try {
    ledger->join(me);
    ADD_FAILURE() << "joined a file another live process uses";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("in use by metro instance 'other' (pid 1"), std::string::npos) << what;
    EXPECT_NE(what.find("postgresql://"), std::string::npos) << what;
  }
  // A process that is gone (its heartbeat stale) is no obstacle: its rows are this one's.
  sqlite_sql(path, "UPDATE instances SET heartbeat = 0");
  EXPECT_NO_THROW(ledger->join(me));
  EXPECT_EQ(ledger->instances().size(), 1u);
  ledger.reset();
  for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path.string() + suffix);
}

// ---- PostgreSQL alone ------------------------------------------------------------------------

class PostgresLedger : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    database_ = "pg" + std::to_string(++counter);
    server().create_database(database_);
    url_ = server().url(database_);
  }
  std::string database_;
  std::string url_;
};

TEST_F(PostgresLedger, InstancesClaimingAtOnceNeverTakeTheSameRow) {
  auto setup = open_ledger(url_);
  std::vector<std::pair<DeferredMessage, std::vector<HandlerRun>>> rows;
  for (int i = 1; i <= 600; ++i) {
    DeferredMessage m;
    m.key = {"t", "s", i};
    m.state = State::kDeferred;
    m.created = m.updated = Clock::now();
    rows.emplace_back(m, std::vector<HandlerRun>{});
  }
  setup->restore(rows);
  constexpr int kInstances = 3;
  std::vector<std::vector<std::int64_t>> taken(kInstances);
  std::vector<std::thread> threads;
  for (int n = 0; n < kInstances; ++n) {
    threads.emplace_back([&, n] {
      auto ledger = open_ledger(url_);
      char host[256] = {};
      ::gethostname(host, sizeof(host) - 1);
      ledger->join({"i" + std::to_string(n), host, ::getpid(), std::chrono::seconds(30)});
      Claim c{"t", "s", {State::kDeferred}, true, std::nullopt, true, 0, 7};
      for (;;) {
        auto page = ledger->claim(c);
        if (page.empty()) break;
        for (auto& m : page) taken[static_cast<std::size_t>(n)].push_back(m.key.sequence_number);
        c.after = page.back().key.sequence_number;
      }
    });
  }
  for (auto& t : threads) t.join();
  std::set<std::int64_t> all;
  std::size_t total = 0;
  for (auto& t : taken) {
    total += t.size();
    all.insert(t.begin(), t.end());
  }
  EXPECT_EQ(total, 600u) << "a row was taken twice";
  EXPECT_EQ(all.size(), 600u);
  int sharing = 0;
  for (auto& t : taken) sharing += t.empty() ? 0 : 1;
  EXPECT_GE(sharing, 1);
}

TEST_F(PostgresLedger, InstancesStartingAtOnceOnAnEmptyDatabaseMigrateOnce) {
  std::vector<std::thread> threads;
  std::atomic<int> opened{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      open_ledger(url_);
      ++opened;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(opened, 4);
  auto rows = server().sql(database_, "SELECT version FROM schema_migrations ORDER BY version");
  std::string every;
  for (const auto& m : postgres_migrations()) every += std::to_string(m.version) + "\n";
  EXPECT_EQ(rows, every);
}

TEST_F(PostgresLedger, OnlyOneInstanceAtATimeHoldsAnExclusiveRight) {
  auto a = open_ledger(url_);
  auto b = open_ledger(url_);
  auto held = a->try_exclusive("reaper");
  ASSERT_TRUE(held);
  EXPECT_FALSE(b->try_exclusive("reaper"));
  EXPECT_TRUE(b->try_exclusive("other"));
  held.reset();
  EXPECT_TRUE(b->try_exclusive("reaper"));
}

TEST_F(PostgresLedger, AnInstanceIdInUseByALiveProcessIsRefused) {
  auto a = open_ledger(url_);
  server().sql(database_,
               "INSERT INTO instances VALUES ('busy', 'some-other-host', 42, 0,"
               " (extract(epoch from clock_timestamp()) * 1000)::bigint, 0, 30000)");
  try {
    a->join({"busy", "this-host", ::getpid(), std::chrono::seconds(30)});
    ADD_FAILURE() << "joined under an id another live instance uses";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("instance_id 'busy' is in use"), std::string::npos)
        << e.what();
  }
  server().sql(database_, "UPDATE instances SET heartbeat = 0");
  EXPECT_NO_THROW(a->join({"busy", "this-host", ::getpid(), std::chrono::seconds(30)}));
}

TEST_F(PostgresLedger, AWrongPasswordOrAnUnreachableServerIsAClearErrorWithoutThePassword) {
  auto wrong = "postgresql://metro:not-the-password@127.0.0.1:" + std::to_string(server().port()) +
               "/" + database_;
  try {
    open_ledger(wrong);
    ADD_FAILURE() << "opened with a wrong password";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("127.0.0.1:" + std::to_string(server().port())), std::string::npos) << what;
    EXPECT_NE(what.find("password authentication failed"), std::string::npos) << what;
    EXPECT_EQ(what.find("not-the-password"), std::string::npos) << what;
  }
  try {
    open_ledger("postgresql://metro:s3cret@127.0.0.1:1/x?connect_timeout=5");
    ADD_FAILURE() << "opened an unreachable server";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("127.0.0.1:1"), std::string::npos) << what;
    EXPECT_NE(what.find("refused"), std::string::npos) << what;
    EXPECT_EQ(what.find("s3cret"), std::string::npos) << what;
  }
  EXPECT_EQ(redact_ledger_url("ledger postgresql://u:p%40ss@h:1/db?x=1 and postgres://h/db "
                              "password=abc host=h password='a b'"),
            "ledger postgresql://u:***@h:1/db?x=1 and postgres://h/db password=*** host=h "
            "password=***");
}

TEST_F(PostgresLedger, WriteProblemSaysUnreachableReadOnlyOrDiskFullAndRecovers) {
  auto ledger = open_ledger(url_);
  EXPECT_FALSE(ledger->write_problem());
  // Disk full, as the server reports it (SQLSTATE 53100), on the probe's table.
  server().sql(database_,
               "CREATE FUNCTION full_disk() RETURNS trigger AS \\$\\$ BEGIN RAISE EXCEPTION"
               " 'could not extend file' USING ERRCODE = 'disk_full'; END \\$\\$ LANGUAGE"
               " plpgsql; CREATE TRIGGER full_disk BEFORE INSERT OR UPDATE ON ledger_probe FOR"
               " EACH ROW EXECUTE FUNCTION full_disk()");
  auto problem = ledger->write_problem();
  ASSERT_TRUE(problem);
  EXPECT_NE(problem->find("the disk is full"), std::string::npos) << *problem;
  server().sql(database_, "DROP TRIGGER full_disk ON ledger_probe");
  EXPECT_FALSE(ledger->write_problem());
  // Read-only: new sessions of the database default to read-only transactions.
  server().sql(database_,
               "ALTER DATABASE " + database_ + " SET default_transaction_read_only = on");
  server().sql("postgres",
               "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname"
               " = '" +
                   database_ + "' AND pid <> pg_backend_pid()");
  EXPECT_TRUE(metro::test::wait_until(
      [&] {
        auto p = ledger->write_problem();
        return p && p->find("read-only") != std::string::npos;
      },
      std::chrono::seconds(30)));
  server().sql("postgres",
               "ALTER DATABASE " + database_ + " SET default_transaction_read_only = off");
  server().sql("postgres",
               "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname"
               " = '" +
                   database_ + "' AND pid <> pg_backend_pid()");
  EXPECT_TRUE(
      metro::test::wait_until([&] { return !ledger->write_problem(); }, std::chrono::seconds(30)));
  // Unreachable: the server stops; writes fail naming it; it comes back and so does the ledger.
  server().stop();
  problem = ledger->write_problem();
  ASSERT_TRUE(problem);
  EXPECT_NE(problem->find("127.0.0.1:" + std::to_string(server().port())), std::string::npos)
      << *problem;
  EXPECT_THROW(ledger->record(DeferredMessage{}), Error);
  server().start();
  EXPECT_TRUE(
      metro::test::wait_until([&] { return !ledger->write_problem(); }, std::chrono::seconds(30)));
  DeferredMessage m;
  m.key = {"t", "s", 1};
  ledger->record(m);
  EXPECT_TRUE(ledger->find(m.key));
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
