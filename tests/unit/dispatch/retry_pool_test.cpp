#include <atomic>
#include <condition_variable>
#include <future>
#include <latch>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include <metro/dispatch/task_queue.hpp>

#include "../../../src/dispatch/retry.hpp"
#include "../../../src/dispatch/worker_pool.hpp"

namespace metro::dispatch {
namespace {

using namespace std::chrono_literals;

TEST(Retry, ImmediateThenExponentialWithJitterUpToTheCap) {
  config::RetryOptions r;
  r.max_attempts = 6;
  r.immediate_retries = 1;
  r.backoff = 1000ms;
  r.max_backoff = 3000ms;
  EXPECT_EQ(next_delay(r, 1, 0.5), 0ms);    // immediate retry
  EXPECT_EQ(next_delay(r, 2, 0.0), 500ms);  // 1 s backoff, lower bound
  EXPECT_EQ(next_delay(r, 2, 0.999), 999ms);
  EXPECT_EQ(next_delay(r, 3, 0.0), 1000ms);  // 2 s
  EXPECT_EQ(next_delay(r, 4, 1.0), 3000ms);  // 4 s capped at 3 s
  EXPECT_EQ(next_delay(r, 5, 0.0), 1500ms);
  EXPECT_EQ(next_delay(r, 6, 0.0), std::nullopt);  // six attempts made
  r.max_attempts = 1;
  EXPECT_EQ(next_delay(r, 1, 0.0), std::nullopt);
}

TEST(WorkerPool, RunsJobsConcurrently) {
  WorkerPool pool(4);
  std::latch all_running(4);
  std::latch release(1);
  std::atomic<int> done{0};
  for (int i = 0; i < 4; ++i) {
    pool.submit([&] {
      all_running.count_down();
      release.wait();
      ++done;
    });
  }
  all_running.wait();  // four at once, or this never returns
  EXPECT_EQ(pool.idle(), 0u);
  release.count_down();
  EXPECT_TRUE(pool.shutdown(10s));
  EXPECT_EQ(done.load(), 4);
  EXPECT_FALSE(pool.submit([] {}));
}

TEST(WorkerPool, ShutdownGivesBackQueuedJobsAndHonoursTheGrace) {
  WorkerPool pool(1);
  std::latch running(1);
  std::latch release(1);
  pool.submit([&] {
    running.count_down();
    release.wait();
  });
  running.wait();
  std::atomic<int> ran{0};
  pool.submit([&] { ++ran; });
  pool.submit([&] { ++ran; });
  std::vector<std::function<void()>> dropped;
  EXPECT_FALSE(pool.shutdown(50ms, &dropped));  // the running job outlives the grace
  EXPECT_EQ(dropped.size(), 2u);
  release.count_down();
  EXPECT_TRUE(pool.shutdown(10s));
  EXPECT_EQ(ran.load(), 0);
}

}  // namespace
}  // namespace metro::dispatch

namespace metro::dispatch {
namespace {

TEST(InProcessQueue, RunsDueTasksAndDelayedOnesInTimeOrder) {
  auto queue = make_in_process_queue(2);
  std::mutex mutex;
  std::vector<std::int64_t> ran;
  std::condition_variable done;
  queue->start([&](const Task& t) {
    std::lock_guard lock(mutex);
    ran.push_back(t.sequence_number);
    done.notify_all();
  });
  auto now = TaskQueue::Clock::now();
  Task a, b, c;
  a.sequence_number = 1;
  b.sequence_number = 2;
  c.sequence_number = 3;
  EXPECT_TRUE(queue->push(b, now + std::chrono::milliseconds(80)));
  EXPECT_TRUE(queue->push(a, now + std::chrono::milliseconds(40)));
  EXPECT_TRUE(queue->push(c));
  std::unique_lock lock(mutex);
  ASSERT_TRUE(done.wait_for(lock, std::chrono::seconds(5), [&] { return ran.size() == 3; }));
  EXPECT_EQ(ran, (std::vector<std::int64_t>{3, 1, 2}));
  EXPECT_EQ(queue->workers(), 2u);
}

TEST(InProcessQueue, ShutdownHandsBackWhatDidNotStart) {
  auto queue = make_in_process_queue(1);
  std::promise<void> started;
  std::promise<void> release;
  auto released = release.get_future().share();
  queue->start([&](const Task& t) {
    if (t.sequence_number == 1) {
      started.set_value();
      released.wait();
    }
  });
  Task a, b, c;
  a.sequence_number = 1;
  b.sequence_number = 2;
  c.sequence_number = 3;
  queue->push(a);
  started.get_future().wait();
  queue->push(b);
  queue->push(c, TaskQueue::Clock::now() + std::chrono::hours(1));
  EXPECT_EQ(queue->busy(), 2u);  // a running, b due; c is not due yet.
  std::vector<Task> dropped;
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    release.set_value();
  });
  EXPECT_TRUE(queue->shutdown(std::chrono::seconds(5), &dropped));
  releaser.join();
  ASSERT_EQ(dropped.size(), 2u);
  EXPECT_EQ(dropped[0].sequence_number, 2);
  EXPECT_EQ(dropped[1].sequence_number, 3);
  EXPECT_FALSE(queue->push(a));
}

}  // namespace
}  // namespace metro::dispatch
