#include "route.hpp"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "function_handler.hpp"
#include "naming.hpp"

namespace metro::dispatch {

Route::Route(std::size_t i, config::SubscriptionOptions o,
             const std::map<std::string, Function>& functions, HandlerFactory* factory,
             std::vector<std::string>* missing)
    : index(i), options(std::move(o)) {
  status_.topic = options.topic_name;
  status_.subscription = options.subscription_name;
  for (const auto& h : options.handlers) {
    stats_.push_back({options.topic_name, options.subscription_name, h.name, {}, 0, 0});
    router.add(routing::SubjectMatcher(h.match, h.subject));
    switch (h.kind) {
      case config::HandlerKind::kExec:
        handlers.push_back(make_exec_handler(h.exec));
        break;
      case config::HandlerKind::kHttp:
        handlers.push_back(make_http_handler(h.http));
        break;
      case config::HandlerKind::kPython:
      case config::HandlerKind::kCelery:
        if (factory == nullptr) {
          throw InvalidArgument("subscription " + options.topic_name + "/" +
                                options.subscription_name + ": handler '" + h.name + "' is a " +
                                std::string(config::to_string(h.kind)) +
                                " handler, and this service has no handler factory for Celery "
                                "tasks (ServiceOptions::handler_factory)");
        }
        handlers.push_back(factory->make(options, h));
        break;
      case config::HandlerKind::kFunction:
        if (auto it = functions.find(h.function); it != functions.end()) {
          handlers.push_back(make_function_handler(it->second));
        } else {
          missing->push_back(h.function);
          handlers.push_back(nullptr);
        }
        break;
    }
  }
}

bool Route::is(std::string_view topic, std::string_view subscription) const {
  return same_name(options.topic_name, topic) && same_name(options.subscription_name, subscription);
}

std::optional<std::size_t> Route::handler_index(const std::string& name) const {
  for (std::size_t i = 0; i < options.handlers.size(); ++i) {
    if (options.handlers[i].name == name) return i;
  }
  return std::nullopt;
}

bool Route::explicit_completion(const std::vector<std::size_t>& indices) const {
  return std::any_of(indices.begin(), indices.end(), [&](std::size_t i) {
    return options.handlers[i].completion == config::Completion::kExplicit;
  });
}

bool Route::asynchronous(std::size_t handler) const {
  return handlers.at(handler) && handlers[handler]->asynchronous();
}

void Route::record_duration(std::size_t handler, std::chrono::milliseconds duration) {
  double seconds = static_cast<double>(duration.count()) / 1000.0;
  auto bucket = static_cast<std::size_t>(
      std::lower_bound(HandlerStats::kBounds.begin(), HandlerStats::kBounds.end(), seconds) -
      HandlerStats::kBounds.begin());
  MutexLock lock(mutex_);
  auto& h = stats_[handler];
  ++h.buckets[bucket];
  ++h.count;
  h.sum_seconds += seconds;
}

void Route::connection_changed(sb::ConnectionState state, const std::string& why) {
  bool changed = false;
  bool reconnected = false;
  {
    MutexLock lock(mutex_);
    changed = status_.state != state;
    status_.state = state;
    status_.state_reason = why;
    if (state == sb::ConnectionState::kConnected) {
      reconnected = was_connected_;
      if (reconnected && changed) ++status_.reconnects;
      was_connected_ = true;
    }
  }
  if (!changed) return;
  auto entity = options.entity_path();
  switch (state) {
    case sb::ConnectionState::kConnected:
      spdlog::info("{}: {}{}", entity,
                   reconnected ? "reconnected: " : "connected: ", log_value(why));
      break;
    case sb::ConnectionState::kDisconnected:
      spdlog::warn("{}: connection lost: {}", entity, log_value(why));
      break;
    case sb::ConnectionState::kConnecting:
      spdlog::info("{}: connecting: {}", entity, log_value(why));
      break;
    case sb::ConnectionState::kClosed:
      spdlog::debug("{}: connection closed", entity);
      break;
  }
}

void Route::received_now() {
  MutexLock lock(mutex_);
  status_.last_message = std::chrono::system_clock::now();
}

SubscriptionStatus Route::status() const {
  MutexLock lock(mutex_);
  return status_;
}

std::vector<HandlerStats> Route::stats() const {
  MutexLock lock(mutex_);
  return stats_;
}

sb::Sender Route::sender() {
  {
    MutexLock lock(mutex_);
    if (sender_) return *sender_;
  }
  auto made = client->create_sender(options.topic_name);  // Attaching waits: unlocked.
  MutexLock lock(mutex_);
  if (!sender_) sender_ = made;
  return *sender_;
}

Route* find_route(const Routes& routes, std::string_view topic, std::string_view subscription) {
  for (const auto& r : routes) {
    if (r->is(topic, subscription)) return r.get();
  }
  return nullptr;
}

}  // namespace metro::dispatch
