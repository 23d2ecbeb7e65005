// The emulator's journal when a write fails: the transaction is rolled back, the next one
// starts cleanly, and the broker goes back to what was stored.
#include "../../../src/emulator/journal.hpp"

#include <filesystem>

#include <gtest/gtest.h>
#include <unistd.h>

#include "../../../src/emulator/broker.hpp"

namespace metro::emulator {
namespace {

using amqp::Value;

amqp::Message body_of(std::size_t bytes) {
  amqp::Message m;
  m.data_sections.push_back(std::string(bytes, 'x'));
  return m;
}

BusConfig one_queue() {
  BusConfig c;
  c.queues.push_back({"q", {}});
  return c;
}

/// How the journal's file stops taking writes: full (SQLite rolls the transaction back itself)
/// or read-only (the transaction stays open unless metro rolls it back).
enum class Refusal { kDiskFull, kReadOnly };

class JournalRefuses : public ::testing::TestWithParam<Refusal> {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("metro-journal-" + std::to_string(::getpid()) + "-" +
            std::to_string(static_cast<int>(GetParam())));
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void refuse(Journal& journal, bool on) {
    if (GetParam() == Refusal::kDiskFull) {
      journal.limit_pages(on ? 1 : 1'000'000);
    } else {
      journal.refuse_writes(on);
    }
  }

  std::filesystem::path dir_;
};

TEST_P(JournalRefuses, AFailedFlushRollsBackAndTheNextOneWorks) {
  Journal journal(dir_);
  Broker broker(one_queue(), true);
  auto& q = *broker.find("q");
  broker.send(q, {body_of(10), body_of(10)}, 1);
  broker.flush(journal);

  refuse(journal, true);
  broker.send(q, {body_of(64 * 1024)}, 2);
  EXPECT_EQ(broker.counts(q).active, 3u);
  EXPECT_THROW(broker.flush(journal), Error);
  // What the journal holds is what was acknowledged: the refused message is gone from memory too.
  broker.reload(journal, 3);
  EXPECT_EQ(broker.counts(q).active, 2u);

  // Writable again: the next write is a fresh transaction (no "within a transaction" error).
  refuse(journal, false);
  broker.send(q, {body_of(64 * 1024)}, 4);
  broker.flush(journal);

  Broker restarted(one_queue());
  restarted.restore(journal, 5);
  EXPECT_EQ(restarted.counts(*restarted.find("q")).active, 3u);
}

TEST_P(JournalRefuses, SequenceNumbersDoNotGoBackAfterARefusedWrite) {
  Journal journal(dir_);
  Broker broker(one_queue(), true);
  auto& q = *broker.find("q");
  auto first = broker.send(q, {body_of(10)}, 1);
  broker.flush(journal);
  refuse(journal, true);
  auto refused = broker.send(q, {body_of(64 * 1024)}, 2);
  EXPECT_THROW(broker.flush(journal), Error);
  broker.reload(journal, 3);
  refuse(journal, false);
  auto next = broker.send(q, {body_of(10)}, 4);
  broker.flush(journal);
  // A number handed out for a refused message is not handed out again.
  EXPECT_GT(next.at(0), refused.at(0));
  EXPECT_GT(refused.at(0), first.at(0));
}

INSTANTIATE_TEST_SUITE_P(Ways, JournalRefuses,
                         ::testing::Values(Refusal::kDiskFull, Refusal::kReadOnly),
                         [](const ::testing::TestParamInfo<Refusal>& way) {
                           return way.param == Refusal::kDiskFull ? "DiskFull" : "ReadOnly";
                         });

}  // namespace
}  // namespace metro::emulator
