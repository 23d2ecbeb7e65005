#include <atomic>
#include <latch>

#include <gtest/gtest.h>

#include <metro/dispatch/retry.hpp>
#include <metro/dispatch/worker_pool.hpp>

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
