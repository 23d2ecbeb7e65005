// The http handler: one POST per run.

#include <set>

#include <httplib.h>

#include <metro/dispatch/handler.hpp>
#include <metro/error.hpp>

#include "../common/thread_annotations.hpp"

namespace metro::dispatch {
namespace {

class HttpHandler : public Handler {
 public:
  explicit HttpHandler(const std::string& url) : url_(url) {
    auto scheme_end = url.find("://");
    if (scheme_end == std::string::npos ||
        (url.rfind("http://", 0) != 0 && url.rfind("https://", 0) != 0)) {
      throw InvalidArgument("an http handler needs an http:// or https:// URL (got '" + url + "')");
    }
    auto path_start = url.find('/', scheme_end + 3);
    origin_ = url.substr(0, path_start);
    path_ = path_start == std::string::npos ? "/" : url.substr(path_start);
  }

  void interrupt() override {
    MutexLock lock(mutex_);
    interrupted_ = true;
    for (auto* client : running_) client->stop();
  }

  Result run(const Task& task, std::chrono::milliseconds timeout) override {
    auto start = std::chrono::steady_clock::now();
    auto elapsed = [&] {
      return std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::steady_clock::now() - start);
    };
    httplib::Client client(origin_);
    auto seconds = std::chrono::duration_cast<std::chrono::seconds>(timeout);
    auto micros = std::chrono::duration_cast<std::chrono::microseconds>(timeout - seconds);
    client.set_connection_timeout(seconds.count(), micros.count());
    client.set_read_timeout(seconds.count(), micros.count());
    client.set_write_timeout(seconds.count(), micros.count());
    httplib::Headers headers = {{"X-Correlation-Id", task.correlation_id},
                                {"X-Metro-Sequence-Number", std::to_string(task.sequence_number)},
                                {"X-Metro-Attempt", std::to_string(task.attempt)}};
    if (!task.trace_parent.empty()) headers.emplace("traceparent", task.trace_parent);
    {
      MutexLock lock(mutex_);
      if (interrupted_) return {Outcome::kRetry, "interrupted: metro was stopping", elapsed()};
      running_.insert(&client);
    }
    auto response = client.Post(path_.c_str(), headers, to_json(task), "application/json");
    {
      MutexLock lock(mutex_);
      running_.erase(&client);
    }
    if (!response) {
      return {Outcome::kRetry, "POST " + url_ + " failed: " + httplib::to_string(response.error()),
              elapsed()};
    }
    auto status = response->status;
    auto why = "POST " + url_ + " answered " + std::to_string(status) +
               (response->body.empty() ? "" : ": " + response->body.substr(0, 512));
    if (status >= 200 && status < 300) return {Outcome::kSuccess, {}, elapsed()};
    if (status >= 500 || status == 408 || status == 429) return {Outcome::kRetry, why, elapsed()};
    return {Outcome::kFailure, why, elapsed()};
  }

 private:
  std::string url_;
  std::string origin_;
  std::string path_;
  Mutex mutex_;
  std::set<httplib::Client*> running_ GUARDED_BY(mutex_);  // Requests under way.
  bool interrupted_ GUARDED_BY(mutex_) = false;
};

}  // namespace

std::unique_ptr<Handler> make_http_handler(const std::string& url) {
  return std::make_unique<HttpHandler>(url);
}

}  // namespace metro::dispatch
