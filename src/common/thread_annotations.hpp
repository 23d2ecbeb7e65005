#pragma once

// Clang's thread-safety analysis (-Wthread-safety) for metro's internal classes: a member that
// several threads share says which mutex guards it, and the compiler checks every access.
// libstdc++'s std::mutex carries no annotations, so shared state uses metro::Mutex and
// metro::MutexLock below; with GCC the macros expand to nothing.

#include <condition_variable>
#include <mutex>

#if defined(__clang__)
#define METRO_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define METRO_THREAD_ANNOTATION(x)
#endif

#define CAPABILITY(x) METRO_THREAD_ANNOTATION(capability(x))
#define SCOPED_CAPABILITY METRO_THREAD_ANNOTATION(scoped_lockable)
#define GUARDED_BY(x) METRO_THREAD_ANNOTATION(guarded_by(x))
#define PT_GUARDED_BY(x) METRO_THREAD_ANNOTATION(pt_guarded_by(x))
#define REQUIRES(...) METRO_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define EXCLUDES(...) METRO_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define ACQUIRE(...) METRO_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define RELEASE(...) METRO_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define TRY_ACQUIRE(...) METRO_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
#define RETURN_CAPABILITY(x) METRO_THREAD_ANNOTATION(lock_returned(x))
#define NO_THREAD_SAFETY_ANALYSIS METRO_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace metro {

/// A std::mutex the analysis knows about.
class CAPABILITY("mutex") Mutex {
 public:
  void lock() ACQUIRE() { mutex_.lock(); }
  void unlock() RELEASE() { mutex_.unlock(); }
  bool try_lock() TRY_ACQUIRE(true) { return mutex_.try_lock(); }

 private:
  std::mutex mutex_;
};

/// Holds a Mutex for its scope; `unlock()`/`lock()` in between are allowed. Waits on a
/// `CondVar` (std::condition_variable_any) take it directly.
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mutex) ACQUIRE(mutex) : mutex_(mutex) { mutex_.lock(); }
  ~MutexLock() RELEASE() {
    if (held_) mutex_.unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  void lock() ACQUIRE() {
    mutex_.lock();
    held_ = true;
  }
  void unlock() RELEASE() {
    held_ = false;
    mutex_.unlock();
  }

 private:
  Mutex& mutex_;
  bool held_ = true;
};

/// A condition variable for MutexLock.
using CondVar = std::condition_variable_any;

}  // namespace metro
