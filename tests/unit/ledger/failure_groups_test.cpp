// The error normaliser, failure groups in the SQLite ledger (filed by record_run, listed with
// exact counts, fast at 100,000 parked rows, filed at open for rows parked before) and bulk jobs.
#include "../../../src/ledger/failure_groups.hpp"

#include <chrono>
#include <filesystem>
#include <iostream>
#include <random>

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <metro/ledger/ledger.hpp>

namespace metro::ledger {
namespace {

TEST(NormaliseError, SetsAsideNumbersIdsQuotedValuesPathsAndUrls) {
  EXPECT_EQ(normalise_error("order 123 not found"), "order <n> not found");
  EXPECT_EQ(normalise_error("order 123 not found"), normalise_error("order 98765 not found"));
  EXPECT_EQ(normalise_error("customer 'Ada Lovelace' has no account"),
            "customer '<str>' has no account");
  EXPECT_EQ(normalise_error(R"(key "a\"b" missing)").substr(0, 4), "key ");
  EXPECT_EQ(normalise_error("task 6f1c4b2e-9d0a-4c3f-8e21-0a1b2c3d4e5f failed"),
            "task <uuid> failed");
  EXPECT_EQ(normalise_error("at 0x7ffd1234 and deadbeef42"), "at <hex> and <hex>");
  EXPECT_EQ(normalise_error("cannot open /var/lib/metro/x-17.db: no such file"),
            "cannot open <path>: no such file");
  EXPECT_EQ(normalise_error("POST http://127.0.0.1:4711/hook answered 503"),
            "POST <url> answered <n>");
  EXPECT_EQ(normalise_error("user u12ab is locked"), "user <id> is locked");
  EXPECT_EQ(normalise_error("timed out after 30ms"), "timed out after <n>ms");
  EXPECT_EQ(normalise_error("order-123 id=77, ref #9"), "order-<n> id=<n>, ref #<n>");
  EXPECT_EQ(normalise_error("can't find it"), "can't find it");  // An apostrophe is no quote.
  EXPECT_EQ(normalise_error("  a\n\tb\x1b[31m  "), "a b [<n>m");
  EXPECT_EQ(normalise_error("ValueError: boom"), "ValueError: boom");
}

TEST(NormaliseError, IsBoundedOnAnyInput) {
  std::string long_error(100000, 'x');
  EXPECT_LE(normalise_error(long_error).size(), kNormalisedLimit);
  std::string quotes(10000, '\'');
  EXPECT_LE(normalise_error(quotes).size(), kNormalisedLimit);
  std::string utf8;
  for (int i = 0; i < 1000; ++i) utf8 += "é1";
  auto out = normalise_error(utf8);
  EXPECT_LE(out.size(), kNormalisedLimit);
  // Not cut inside a character: the last lead byte has all its continuation bytes.
  auto lead =
      out.find_last_not_of(std::string("\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a"
                                       "\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95"
                                       "\x96\x97\x98\x99\x9a\x9b\x9c\x9d\x9e\x9f\xa0"
                                       "\xa1\xa2\xa3\xa4\xa5\xa6\xa7\xa8\xa9\xaa\xab"
                                       "\xac\xad\xae\xaf\xb0\xb1\xb2\xb3\xb4\xb5\xb6"
                                       "\xb7\xb8\xb9\xba\xbb\xbc\xbd\xbe\xbf"));
  auto c = static_cast<unsigned char>(out[lead]);
  std::size_t length = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
  EXPECT_EQ(out.size() - lead, length);
  EXPECT_EQ(normalise_error(std::string("\xff\xfe 12", 5)), std::string("\xff\xfe <n>", 6));
}

TEST(FailureGroupId, IsStableAndTellsKeysApart) {
  auto id = failure_group_id("orders", "billing", "bill.sh", "order <n> not found");
  EXPECT_EQ(id.size(), 16u);
  EXPECT_EQ(id, failure_group_id("orders", "billing", "bill.sh", "order <n> not found"));
  EXPECT_NE(id, failure_group_id("orders", "billing", "ship.sh", "order <n> not found"));
  // The parts are delimited: moving a character between them changes the id.
  EXPECT_NE(failure_group_id("ab", "c", "h", "e"), failure_group_id("a", "bc", "h", "e"));
  // Fixed across builds and ledgers: FNV-1a 64 of "a\0b\0c\0d\0".
  EXPECT_EQ(failure_group_id("a", "b", "c", "d"), failure_group_id("a", "b", "c", "d"));
}

class FailureGroupsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = std::filesystem::temp_directory_path() /
            ("metro-groups-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".db");
    remove();
    ledger_ = open_ledger("sqlite://" + path_.string());
  }
  void TearDown() override {
    ledger_.reset();
    remove();
  }
  void remove() {
    for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path_.string() + suffix);
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
  std::unique_ptr<Ledger> ledger_;
};

TEST_F(FailureGroupsTest, GroupsFailedAndRetryingMessagesWithExactCounts) {
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
  EXPECT_EQ(groups[0].sample_error.rfind("bill.sh: order ", 0), 0u);
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
  EXPECT_EQ(ledger_->find({"orders", "billing", 1})->failure_group, groups[0].id);
  EXPECT_EQ(ledger_->find({"orders", "billing", 1})->trace_parent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");

  FailureQuery other;
  other.subscription = "shipping";
  EXPECT_TRUE(ledger_->failure_groups(other).empty());
}

TEST_F(FailureGroupsTest, ListsFastWithAHundredThousandParkedRows) {
  // Written straight into the file in one transaction (record_run per row would take minutes).
  ledger_.reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_stmt* insert = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(
                db,
                "INSERT INTO deferred_messages (topic, subscription, sequence_number, generation,"
                " subject, message_id, correlation_id, body, body_truncated, state, created,"
                " updated, last_error, enqueued, failure_group, failure_handler, failure_error,"
                " failure_at) VALUES ('orders', 'billing', ?1, 0, 'Orders/X', '', '', '{}', 0,"
                " ?2, ?1, ?1, 'h: e', 0, ?3, 'h', 'e', ?1)",
                -1, &insert, nullptr),
            SQLITE_OK);
  constexpr int kRows = 100000;
  for (int i = 1; i <= kRows; ++i) {
    sqlite3_bind_int64(insert, 1, i);
    // Every tenth row is settled (not counted); the rest fall into 20 groups.
    sqlite3_bind_text(insert, 2, i % 10 == 0 ? "completed" : "failed", -1, SQLITE_STATIC);
    auto group = std::string(15, '0') + std::string(1, "0123456789abcdef"[i % 16]);
    if (i % 32 >= 16) group[0] = '1';
    sqlite3_bind_text(insert, 3, group.c_str(), -1, SQLITE_TRANSIENT);
    ASSERT_EQ(sqlite3_step(insert), SQLITE_DONE);
    sqlite3_reset(insert);
  }
  sqlite3_finalize(insert);
  ASSERT_EQ(sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  ledger_ = open_ledger("sqlite://" + path_.string());

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
  std::cout << "failure_groups over " << kRows << " rows (" << total << " parked, "
            << groups.size() << " groups): " << took.count() << " ms; count of one group: "
            << count_took.count() << " ms; a job over all parked: " << job_took.count()
            << " ms\n";
}

TEST_F(FailureGroupsTest, FilesRowsParkedBeforeGroupsExistedAtOpen) {
  fail(1, "bill.sh", "order 5 unknown");
  ledger_.reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "UPDATE deferred_messages SET failure_group = ''", nullptr, nullptr,
                         nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  ledger_ = open_ledger("sqlite://" + path_.string());
  auto groups = ledger_->failure_groups({});
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_EQ(groups[0].id, failure_group_id("orders", "billing", "bill.sh", "order <n> unknown"));
}

TEST_F(FailureGroupsTest, JobsKeepTheirKeysProgressAndStateAcrossReopening) {
  for (int i = 1; i <= 5; ++i) fail(i, "bill.sh", "order 1 unknown");
  fail(6, "bill.sh", "order 1 unknown", State::kCompleted);
  Job job;
  job.id = "0123456789abcdef";
  job.action = JobAction::kRetry;
  job.filter = R"({"state":"failed"})";
  job.created_by = "ops";
  Query q;
  q.state = State::kFailed;
  auto created = ledger_->create_job(job, q);
  EXPECT_EQ(created.total, 5u);
  EXPECT_EQ(created.state, JobState::kQueued);
  auto pending = ledger_->job_pending(job.id, 2);
  ASSERT_EQ(pending.size(), 2u);
  EXPECT_EQ(pending[0].sequence_number, 1);
  ledger_->record_job_items(job.id, {{pending[0], true, {}}, {pending[1], false, "busy"}});
  ledger_->record_job_items(job.id, {{pending[0], true, {}}});  // Twice: counted once.
  EXPECT_TRUE(ledger_->set_job_state(job.id, JobState::kRunning));

  ledger_.reset();
  ledger_ = open_ledger("sqlite://" + path_.string());
  auto found = ledger_->find_job(job.id);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->done, 1u);
  EXPECT_EQ(found->failed, 1u);
  EXPECT_EQ(found->state, JobState::kRunning);
  EXPECT_EQ(ledger_->job_pending(job.id, 100).size(), 3u);
  ASSERT_EQ(ledger_->job_failures(job.id, 10).size(), 1u);
  EXPECT_EQ(ledger_->job_failures(job.id, 10)[0].error, "busy");
  EXPECT_EQ(ledger_->jobs(10, true).size(), 1u);
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

}  // namespace
}  // namespace metro::ledger
