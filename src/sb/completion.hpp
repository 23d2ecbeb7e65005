#pragma once

// A promise that may be kept or broken from several places (a reply, a deadline, a lost
// connection) of which only the first counts: the shape every asynchronous operation of the
// client completes through.

#include <atomic>
#include <exception>
#include <future>
#include <memory>

namespace metro::sb::detail {

template <typename T>
class Completion {
 public:
  std::future<T> future() { return promise_.get_future(); }
  template <typename... V>
  void set(V&&... value) {
    if (done_.exchange(true)) return;
    auto promise = std::move(promise_);
    promise.set_value(std::forward<V>(value)...);
  }
  void fail(std::exception_ptr error) {
    if (done_.exchange(true)) return;
    auto promise = std::move(promise_);
    promise.set_exception(std::move(error));
  }
  // The promise is let go as soon as it is kept: the waiting side then owns the result (and an
  // exception in it) alone, however long this object lives on in callbacks.

 private:
  std::promise<T> promise_;
  std::atomic<bool> done_{false};
};

}  // namespace metro::sb::detail
