#pragma once

// Celery task messages (protocol v2) as Celery 5's own `apply_async` writes them into a Redis
// broker through kombu's Redis transport: the envelope, its headers and properties, the base64
// JSON body `[args, kwargs, embed]`, and the list (queue) key it is pushed to. Pure functions, no
// I/O. Thread-safety: reentrant.

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace metro::celery {

/// One task to send. Arguments and keyword arguments are JSON texts, embedded as they are (so a
/// message body reaches the worker exactly as it was published, numbers and all).
struct TaskMessage {
  std::string id;    ///< The task id; empty: a fresh UUID4.
  std::string task;  ///< The name the task is registered under, e.g. "myapp.tasks.handle".
  std::string queue = "celery";
  int priority = 0;  ///< 0-9; on Redis 0 runs first. Picks the list key (see `queue_key`).
  std::vector<std::string> args;                            ///< JSON values.
  std::vector<std::pair<std::string, std::string>> kwargs;  ///< Name, JSON value.
  /// More headers (name, JSON value); the worker's `self.request` has them as attributes.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string origin;  ///< Who sent it; empty: "metro<pid>@<host name>".
};

/// What goes to Redis: `LPUSH key payload`.
struct Envelope {
  std::string task_id;
  std::string key;
  std::string payload;
};

/// Builds the envelope. Throws `metro::InvalidArgument` for a task name or queue that is empty, a
/// priority outside 0-9, or an argument that is not JSON (nothing that would stop a worker is
/// ever produced: a malformed envelope makes a Celery worker exit and lose the message).
Envelope encode_task_message(const TaskMessage& message);

/// The Redis list a message of `priority` goes to: the queue name for 0-2, else the name,
/// "\x06\x16" and the priority step (3, 6 or 9), as kombu's Redis transport does.
std::string queue_key(std::string_view queue, int priority);

/// A random (version 4) UUID in its usual text form.
std::string new_task_id();

/// `text` as a JSON string the way Python's json.dumps writes it (ASCII only, \uXXXX escapes);
/// invalid UTF-8 becomes U+FFFD.
std::string python_json_string(std::string_view text);

/// Celery's `saferepr(value, maxlen)` of a JSON value (what `argsrepr`/`kwargsrepr` hold):
/// containers nested deeper than three levels as `{...}`, strings in single quotes, cut off
/// with ", ..." after `maxlen` characters. `json` must be valid JSON.
std::string python_saferepr(std::string_view json, std::size_t maxlen = 1024);

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for exponents -4..15.
std::string python_float(double value);

}  // namespace metro::celery
