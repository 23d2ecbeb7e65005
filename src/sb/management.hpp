#pragma once

// $management operations as callers start them: on the event thread through an entity's
// ManagementLink, answered by a future or a blocking wait. A status other than 200 becomes the
// error of its category (NotFoundError for 404, …). Callable from any thread.

#include <functional>
#include <future>
#include <memory>
#include <string>

#include "../amqp/value.hpp"
#include "engine.hpp"
#include "links.hpp"

namespace metro::sb::detail {

/// An entity's $management link, made and registered with the engine on first use.
class LazyManagement {
 public:
  LazyManagement(std::shared_ptr<Engine> engine, std::string entity)
      : engine_(std::move(engine)), entity_(std::move(entity)) {}
  /// Lets the link go (once its requests are answered).
  ~LazyManagement();
  LazyManagement(const LazyManagement&) = delete;
  LazyManagement& operator=(const LazyManagement&) = delete;

  /// The link; ClientClosedError when the client is closed.
  std::shared_ptr<ManagementLink> get() EXCLUDES(mutex_);

 private:
  std::shared_ptr<Engine> engine_;
  const std::string entity_;
  Mutex mutex_;
  std::shared_ptr<ManagementLink> link_ GUARDED_BY(mutex_);
};

/// `done` gets the reply body, or the error; with `none_ok`, 202 and 204 count as success.
void start_management(Engine& engine, const std::shared_ptr<ManagementLink>& link,
                      const std::string& operation, amqp::Value body, bool none_ok,
                      std::function<void(std::exception_ptr, amqp::Value)> done);
std::future<amqp::Value> management_future(Engine& engine,
                                           const std::shared_ptr<ManagementLink>& link,
                                           const std::string& operation, amqp::Value body,
                                           bool none_ok = false);
/// Runs it and waits (up to the operation timeout); throws the error.
amqp::Value run_management(Engine& engine, const std::shared_ptr<ManagementLink>& link,
                           const std::string& operation, amqp::Value body, bool none_ok = false);

}  // namespace metro::sb::detail
