#pragma once

// What Celery's Redis result backend writes for a task (`celery-task-meta-<id>`, and the same
// JSON published on the channel of that name): its state, and for a failure the exception's type,
// message and traceback. Read with a streaming parser after a depth check, keeping only what
// metro needs, each part bounded: a task's return value can be large and is never kept.
// Thread-safety: reentrant.

#include <optional>
#include <string>
#include <string_view>

namespace metro::celery {

/// Celery's task states (celery/states.py); PENDING is what an unknown id reads as.
enum class TaskState {
  kPending,
  kReceived,
  kStarted,
  kRetry,
  kSuccess,
  kFailure,
  kRevoked,
  kRejected,
  kIgnored,
  kOther,  ///< A custom state a task set with update_state.
};

std::string_view to_string(TaskState state);
TaskState task_state_from(std::string_view status);
/// SUCCESS, FAILURE, REVOKED: the task will not change state again by itself.
bool is_ready(TaskState state);

/// Bounds on what is kept of one result.
inline constexpr std::size_t kMaxExceptionText = 2048;
inline constexpr std::size_t kMaxTraceback = 8192;  ///< The end of it is kept.

struct TaskMeta {
  TaskState state = TaskState::kPending;
  std::string status;  ///< As written (for kOther), at most 64 bytes.
  std::string task_id;
  std::string exception_type;     ///< `result.exc_type` of FAILURE, RETRY, REVOKED.
  std::string exception_message;  ///< `result.exc_message`, its parts joined with ", ".
  std::string exception_module;
  std::string traceback;  ///< The last kMaxTraceback bytes.

  /// `ValueError: boom 42`, or the status when there is no exception.
  std::string exception_text() const;
};

/// Parses a result-backend value. Nullopt (and `error` says why) when it is not a JSON object
/// with a string `status`. With `prefix_only`, `json` is the start of a longer value (read with
/// GETRANGE): what was parsed before it ends is used.
std::optional<TaskMeta> parse_task_meta(std::string_view json, std::string& error,
                                        bool prefix_only = false);

/// The last `lines` non-empty lines of a Python traceback, trimmed, joined with "\n".
std::string traceback_tail(std::string_view traceback, int lines = 4);

}  // namespace metro::celery
