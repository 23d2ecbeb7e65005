// Celery result values, read with nlohmann's SAX interface: no tree is built, strings not needed
// are dropped as they pass, and those kept are cut to their bounds.

#include "task_meta.hpp"

#include <array>
#include <vector>

#include <nlohmann/json.hpp>

#include "../common/json_bounds.hpp"

namespace metro::celery {
namespace {

constexpr std::array<std::pair<std::string_view, TaskState>, 9> kStates{{
    {"PENDING", TaskState::kPending},
    {"RECEIVED", TaskState::kReceived},
    {"STARTED", TaskState::kStarted},
    {"RETRY", TaskState::kRetry},
    {"SUCCESS", TaskState::kSuccess},
    {"FAILURE", TaskState::kFailure},
    {"REVOKED", TaskState::kRevoked},
    {"REJECTED", TaskState::kRejected},
    {"IGNORED", TaskState::kIgnored},
}};

void append_bounded(std::string& out, std::string_view text, std::size_t max) {
  if (out.size() >= max) return;
  out.append(text.substr(0, max - out.size()));
}

/// Keeps `status`, `task_id`, `traceback` and, under `result`, `exc_type`, `exc_message` and
/// `exc_module`; skips everything else.
class MetaReader : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit MetaReader(TaskMeta& meta) : meta_(meta) {}

  bool null() override { return scalar("None"); }
  bool boolean(bool value) override { return scalar(value ? "True" : "False"); }
  bool number_integer(number_integer_t value) override { return scalar(std::to_string(value)); }
  bool number_unsigned(number_unsigned_t value) override { return scalar(std::to_string(value)); }
  bool number_float(number_float_t /*value*/, const string_t& text) override {
    return scalar(text);
  }
  bool string(string_t& value) override {
    if (depth_ == 1) {
      if (key_ == "status") {
        saw_status_ = true;
        append_bounded(meta_.status, value, 64);
      } else if (key_ == "task_id") {
        append_bounded(meta_.task_id, value, 256);
      } else if (key_ == "traceback") {
        meta_.traceback =
            value.size() > kMaxTraceback ? value.substr(value.size() - kMaxTraceback) : value;
      }
      return true;
    }
    return scalar(value);
  }
  bool binary(binary_t& /*value*/) override { return true; }

  bool start_object(std::size_t /*size*/) override {
    ++depth_;
    if (depth_ == 2 && key_ == "result") in_result_ = true;
    return true;
  }
  bool end_object() override {
    if (depth_ == 2) in_result_ = false;
    --depth_;
    return true;
  }
  bool start_array(std::size_t /*size*/) override {
    ++depth_;
    return true;
  }
  bool end_array() override {
    --depth_;
    return true;
  }
  bool key(string_t& value) override {
    if (depth_ == 1) {
      key_ = value.substr(0, 32);
    } else if (depth_ == 2 && in_result_) {
      result_key_ = value.substr(0, 32);
    }
    return true;
  }
  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& e) override {
    error_ = e.what();
    return false;
  }

  bool saw_status() const { return saw_status_; }
  const std::string& error() const { return error_; }

 private:
  /// A scalar inside `result` (exception fields; `exc_message` may be a list of them).
  bool scalar(std::string_view text) {
    if (!in_result_) return true;
    if (depth_ == 2) {
      if (result_key_ == "exc_type") {
        append_bounded(meta_.exception_type, text, 256);
      } else if (result_key_ == "exc_module") {
        append_bounded(meta_.exception_module, text, 256);
      } else if (result_key_ == "exc_message") {
        append_bounded(meta_.exception_message, text, kMaxExceptionText);
      }
    } else if (depth_ == 3 && result_key_ == "exc_message") {
      if (!meta_.exception_message.empty())
        append_bounded(meta_.exception_message, ", ", kMaxExceptionText);
      append_bounded(meta_.exception_message, text, kMaxExceptionText);
    }
    return true;
  }

  TaskMeta& meta_;
  int depth_ = 0;
  std::string key_;
  std::string result_key_;
  bool in_result_ = false;
  bool saw_status_ = false;
  std::string error_;
};

}  // namespace

std::string_view to_string(TaskState state) {
  for (const auto& [name, value] : kStates) {
    if (value == state) return name;
  }
  return "OTHER";
}

TaskState task_state_from(std::string_view status) {
  for (const auto& [name, value] : kStates) {
    if (name == status) return value;
  }
  return TaskState::kOther;
}

bool is_ready(TaskState state) {
  return state == TaskState::kSuccess || state == TaskState::kFailure ||
         state == TaskState::kRevoked;
}

std::string TaskMeta::exception_text() const {
  if (exception_type.empty()) return status;
  return exception_message.empty() ? exception_type : exception_type + ": " + exception_message;
}

std::optional<TaskMeta> parse_task_meta(std::string_view json, std::string& error,
                                        bool prefix_only) {
  if (auto problem = json_bounds::check(json)) {
    error = "the result cannot be read: " + *problem;
    return std::nullopt;
  }
  auto first = json.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos || json[first] != '{') {
    error = "the result is not a JSON object";
    return std::nullopt;
  }
  TaskMeta meta;
  MetaReader reader(meta);
  bool complete = nlohmann::json::sax_parse(json, &reader);
  if (!complete && !prefix_only) {
    error = "the result is not valid JSON: " + reader.error();
    return std::nullopt;
  }
  if (!reader.saw_status()) {
    error = "the result has no status";
    return std::nullopt;
  }
  meta.state = task_state_from(meta.status);
  return meta;
}

std::string traceback_tail(std::string_view traceback, int lines) {
  std::vector<std::string_view> kept;
  while (!traceback.empty() && static_cast<int>(kept.size()) < lines) {
    auto end = traceback.find_last_not_of(" \t\r\n");
    if (end == std::string_view::npos) break;
    traceback = traceback.substr(0, end + 1);
    auto start = traceback.rfind('\n');
    auto line = start == std::string_view::npos ? traceback : traceback.substr(start + 1);
    auto text_start = line.find_first_not_of(" \t");
    kept.push_back(line.substr(text_start == std::string_view::npos ? line.size() : text_start));
    traceback = start == std::string_view::npos ? std::string_view{} : traceback.substr(0, start);
  }
  std::string out;
  for (auto it = kept.rbegin(); it != kept.rend(); ++it) {
    if (!out.empty()) out += '\n';
    out += *it;
  }
  return out;
}

}  // namespace metro::celery
