// A C++ function as a handler: returning is success, RetryLater asks for a retry, any other
// exception is a failed attempt. A function cannot be interrupted, so a run past its timeout
// counts as failed when it returns.

#include "function_handler.hpp"

namespace metro::dispatch {
namespace {

class FunctionHandler : public Handler {
 public:
  explicit FunctionHandler(Function function) : function_(std::move(function)) {}

  Result run(const Task& task, std::chrono::milliseconds timeout) override {
    using std::chrono::milliseconds;
    auto start = std::chrono::steady_clock::now();
    Result result{Outcome::kSuccess, {}, {}};
    try {
      function_(task);
    } catch (const RetryLater& e) {
      result = {Outcome::kRetry, e.what(), {}};
    } catch (const std::exception& e) {
      result = {Outcome::kFailure, e.what(), {}};
    } catch (...) {
      result = {Outcome::kFailure, "the handler threw something that is not a std::exception", {}};
    }
    result.duration =
        std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start);
    if (result.outcome == Outcome::kSuccess && result.duration > timeout) {
      result = {Outcome::kFailure,
                "ran " + std::to_string(result.duration.count()) + " ms, past its timeout of " +
                    std::to_string(timeout.count()) + " ms",
                result.duration};
    }
    return result;
  }

 private:
  Function function_;
};

}  // namespace

std::unique_ptr<Handler> make_function_handler(Function function) {
  return std::make_unique<FunctionHandler>(std::move(function));
}

}  // namespace metro::dispatch
