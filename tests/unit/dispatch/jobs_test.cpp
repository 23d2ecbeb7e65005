// The bulk job runner on a real SQLite ledger, with its actions given as functions: how it waits
// for settlement confirmations. A stop is not held up by a confirmation that does not come; what
// was unconfirmed at the stop is not recorded, so a new start acts on it again; a future that is
// invalid (the action threw) or deferred (run by get) is taken as it is.
#include "../../../src/dispatch/jobs.hpp"

#include <filesystem>
#include <future>
#include <map>
#include <mutex>
#include <set>

#include <gtest/gtest.h>

#include <metro/ledger/ledger.hpp>

#include "../../support/test_support.hpp"

namespace metro::dispatch {
namespace {

using namespace std::chrono_literals;
using ledger::JobAction;
using ledger::JobState;
using ledger::MessageKey;
using ledger::State;
using metro::test::wait_until;

/// The settlements a test holds back: their futures are ready when it releases them, and new
/// ones at once after that.
class Settlements {
 public:
  std::future<void> hold(std::int64_t seq) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (released_.count(seq)) {
      std::promise<void> p;
      p.set_value();
      return p.get_future();
    }
    return held_[seq].get_future();
  }
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [seq, promise] : held_) {
      if (!released_.count(seq)) promise.set_value();
      released_.insert(seq);
    }
  }
  ~Settlements() { release(); }

 private:
  std::mutex mutex_;
  std::map<std::int64_t, std::promise<void>> held_;
  std::set<std::int64_t> released_;
};

class JobRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = std::filesystem::temp_directory_path() /
            ("metro-jobs-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".db");
    remove();
    ledger_ = ledger::open_ledger("sqlite://" + path_.string());
  }
  void TearDown() override {
    ledger_.reset();
    remove();
  }
  void remove() {
    for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path_.string() + suffix);
  }

  /// `count` parked messages, sequence numbers 1…count, and a job of `action` over them.
  std::string park_and_create(int count, JobAction action) {
    for (int seq = 1; seq <= count; ++seq) {
      ledger::DeferredMessage m;
      m.key = {"orders", "billing", seq};
      m.subject = "Orders/Created";
      m.message_id = "m" + std::to_string(seq);
      m.body = "{}";
      m.state = State::kFailed;
      ledger_->record(m);
    }
    ledger::Job job;
    job.id = new_job_id();
    job.action = action;
    job.filter = R"({"state":"failed"})";
    job.created_by = "ops";
    ledger::Query q;
    q.state = State::kFailed;
    EXPECT_EQ(ledger_->create_job(job, q).total, static_cast<std::size_t>(count));
    return job.id;
  }

  std::filesystem::path path_;
  std::unique_ptr<ledger::Ledger> ledger_;
};

std::future<void> ready() {
  std::promise<void> p;
  p.set_value();
  return p.get_future();
}

TEST_F(JobRunnerTest, AStopIsNotHeldUpByUnconfirmedSettlementsWhichAreActedOnAgainAfter) {
  for (auto action : {JobAction::kComplete, JobAction::kDeadLetter}) {
    SCOPED_TRACE(std::string(to_string(action)));
    TearDown();
    SetUp();
    auto id = park_and_create(6, action);
    // 1 confirmed at once, 2 refused (the action throws: no future), 3 and 4 never confirmed,
    // 5 a deferred future (run by get), 6 confirmed with an error.
    Settlements settlements;
    std::mutex mutex;
    std::vector<std::int64_t> acted;
    auto act = [&](const MessageKey& key) -> std::future<void> {
      {
        std::lock_guard<std::mutex> lock(mutex);
        acted.push_back(key.sequence_number);
      }
      switch (key.sequence_number) {
        case 2:
          throw std::runtime_error("is being handled right now");
        case 3:
        case 4:
          return settlements.hold(key.sequence_number);
        case 5:
          return std::async(std::launch::deferred, [] {});
        case 6: {
          std::promise<void> p;
          p.set_exception(std::make_exception_ptr(std::runtime_error("lock lost")));
          return p.get_future();
        }
        default:
          return ready();
      }
    };
    JobActions actions;
    actions.retry = [](const MessageKey&) {};
    actions.complete = act;
    actions.dead_letter = [&](const MessageKey& key, const std::string&, const std::string&) {
      return act(key);
    };
    actions.room_for_retry = [] { return true; };
    JobLimits limits;
    limits.rate = 1000;
    limits.settle_wait = 10min;  // Far longer than any wait of this test.
    {
      JobRunner runner(*ledger_, actions, limits);
      runner.start();
      ASSERT_TRUE(wait_until(
          [&] {
            std::lock_guard<std::mutex> lock(mutex);
            return acted.size() == 6;
          },
          60s));
      // The runner now waits for 3's confirmation; a stop ends that wait.
      auto stopping = std::async(std::launch::async, [&] { runner.stop(); });
      bool prompt = stopping.wait_for(60s) == std::future_status::ready;
      if (!prompt) settlements.release();  // Lets the runner end, so that the test does.
      stopping.get();
      ASSERT_TRUE(prompt) << "the stop waited for a settlement's confirmation";
    }
    auto job = ledger_->find_job(id);
    ASSERT_TRUE(job);
    EXPECT_EQ(job->state, JobState::kRunning);  // Goes on at the next start.
    EXPECT_EQ(job->done, 2u);                   // 1 and 5.
    EXPECT_EQ(job->failed, 2u);                 // 2 and 6, with their errors.
    auto failures = ledger_->job_failures(id, 10);
    ASSERT_EQ(failures.size(), 2u);
    EXPECT_EQ(failures[0].key.sequence_number, 2);
    EXPECT_EQ(failures[0].error, "is being handled right now");
    EXPECT_EQ(failures[1].error, "lock lost");
    auto pending = ledger_->job_pending(id, 10);
    ASSERT_EQ(pending.size(), 2u);
    EXPECT_EQ(pending[0].sequence_number, 3);
    EXPECT_EQ(pending[1].sequence_number, 4);

    // A new start acts on the unconfirmed ones again, and only on them.
    {
      std::lock_guard<std::mutex> lock(mutex);
      acted.clear();
    }
    settlements.release();
    JobRunner runner(*ledger_, actions, limits);
    runner.start();
    ASSERT_TRUE(wait_until(
        [&] {
          auto j = ledger_->find_job(id);
          return j && j->state == JobState::kCompleted;
        },
        60s));
    runner.stop();
    job = ledger_->find_job(id);
    EXPECT_EQ(job->done, 4u);
    EXPECT_EQ(job->failed, 2u);
    std::lock_guard<std::mutex> lock(mutex);
    EXPECT_EQ(acted, (std::vector<std::int64_t>{3, 4}));
  }
}

TEST_F(JobRunnerTest, AConfirmationThatDoesNotComeInTimeIsAFailureOfThatMessage) {
  auto id = park_and_create(3, JobAction::kComplete);
  Settlements settlements;
  JobActions actions;
  actions.retry = [](const MessageKey&) {};
  actions.complete = [&](const MessageKey& key) {
    return key.sequence_number == 2 ? settlements.hold(2) : ready();
  };
  actions.dead_letter = [](const MessageKey&, const std::string&, const std::string&) {
    return ready();
  };
  actions.room_for_retry = [] { return true; };
  JobLimits limits;
  limits.rate = 1000;
  limits.settle_wait = 300ms;
  JobRunner runner(*ledger_, actions, limits);
  runner.start();
  ASSERT_TRUE(wait_until(
      [&] {
        auto j = ledger_->find_job(id);
        return j && j->state == JobState::kCompleted;
      },
      60s));
  runner.stop();
  auto job = ledger_->find_job(id);
  EXPECT_EQ(job->done, 2u);
  EXPECT_EQ(job->failed, 1u);
  auto failures = ledger_->job_failures(id, 10);
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_EQ(failures[0].key.sequence_number, 2);
  EXPECT_NE(failures[0].error.find("did not confirm it in time"), std::string::npos);
}

}  // namespace
}  // namespace metro::dispatch
