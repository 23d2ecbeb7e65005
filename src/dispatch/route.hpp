#pragma once

// One subscription of the config with everything the service needs for it: its options, the
// compiled router, the handlers, the client and receiver, and what the API reports about it.
// The options, router and handlers are fixed once built; `client` and `receiver` are set by
// `Service::start` before any other thread uses them; the status and statistics have their own
// lock.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <metro/config/config.hpp>
#include <metro/dispatch/handler.hpp>
#include <metro/dispatch/service.hpp>
#include <metro/routing/router.hpp>
#include <metro/sb/client.hpp>

#include "../common/thread_annotations.hpp"

namespace metro::dispatch {

class Route {
 public:
  /// `factory` builds the python and celery handlers (null: such a handler is refused).
  Route(std::size_t index, config::SubscriptionOptions options,
        const std::map<std::string, Function>& functions, HandlerFactory* factory,
        std::vector<std::string>* missing);

  const std::size_t index;  ///< Position in the config (and in the service's routes).
  const config::SubscriptionOptions options;
  routing::Router router;
  std::vector<std::unique_ptr<Handler>> handlers;  // Same order as options.handlers.
  std::shared_ptr<sb::Client> client;
  std::optional<sb::Receiver> receiver;

  const std::string& topic() const { return options.topic_name; }
  const std::string& subscription() const { return options.subscription_name; }
  /// Whether this route consumes `topic`/`subscription` (compared as Service Bus does).
  bool is(std::string_view topic, std::string_view subscription) const;
  std::optional<std::size_t> handler_index(const std::string& name) const;
  bool explicit_completion(const std::vector<std::size_t>& indices) const;
  /// Whether a handler's runs go on outside metro (Celery tasks).
  bool asynchronous(std::size_t handler) const;

  void record_duration(std::size_t handler, std::chrono::milliseconds duration) EXCLUDES(mutex_);
  /// The connection changed state: counts reconnects, logs the change once.
  void connection_changed(sb::ConnectionState state, const std::string& why) EXCLUDES(mutex_);
  void received_now() EXCLUDES(mutex_);
  SubscriptionStatus status() const EXCLUDES(mutex_);
  std::vector<HandlerStats> stats() const EXCLUDES(mutex_);
  /// A sender to the topic, attached on first use.
  sb::Sender sender() EXCLUDES(mutex_);

 private:
  mutable Mutex mutex_;
  SubscriptionStatus status_ GUARDED_BY(mutex_);
  bool was_connected_ GUARDED_BY(mutex_) = false;
  std::vector<HandlerStats> stats_ GUARDED_BY(mutex_);  // Same order as options.handlers.
  std::optional<sb::Sender> sender_ GUARDED_BY(mutex_);
};

using Routes = std::vector<std::unique_ptr<Route>>;

/// The route consuming `topic`/`subscription` (any case), or null.
Route* find_route(const Routes& routes, std::string_view topic, std::string_view subscription);

}  // namespace metro::dispatch
