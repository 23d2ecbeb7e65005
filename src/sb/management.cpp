#include "management.hpp"

#include "completion.hpp"

namespace metro::sb::detail {

using amqp::Value;

LazyManagement::~LazyManagement() {
  std::shared_ptr<ManagementLink> link;
  {
    MutexLock lock(mutex_);
    link = std::move(link_);
  }
  // Refused once the client is closed: then there is nothing left to let go of.
  if (link) (void)engine_->post([link] { link->release(); });
}

std::shared_ptr<ManagementLink> LazyManagement::get() {
  MutexLock lock(mutex_);
  if (!link_) {
    auto link = std::make_shared<ManagementLink>(*engine_, entity_);
    engine_->run([e = engine_.get(), link] { e->add(link); },
                 "a $management request to " + entity_);
    link_ = std::move(link);
  }
  return link_;
}

void start_management(Engine& engine, const std::shared_ptr<ManagementLink>& link,
                      const std::string& operation, Value body, bool none_ok,
                      std::function<void(std::exception_ptr, Value)> done) {
  auto deadline = engine.deadline();
  engine.run(
      [link, operation, body = std::move(body), none_ok, done = std::move(done), deadline] {
        link->request(
            operation, body,
            [done, none_ok](std::exception_ptr error, codec::Reply reply) {
              if (error) return done(std::move(error), Value::null());
              if (reply.status == 200 ||
                  (none_ok && (reply.status == 204 || reply.status == 202))) {
                return done(nullptr, std::move(reply.body));
              }
              done(error_for(reply.condition, reply.description, reply.status), Value::null());
            },
            deadline);
      },
      operation + " on " + link->address());
}

std::future<Value> management_future(Engine& engine, const std::shared_ptr<ManagementLink>& link,
                                     const std::string& operation, Value body, bool none_ok) {
  auto result = std::make_shared<Completion<Value>>();
  auto future = result->future();
  start_management(engine, link, operation, std::move(body), none_ok,
                   [result](std::exception_ptr error, Value reply) {
                     if (error) return result->fail(std::move(error));
                     result->set(std::move(reply));
                   });
  return future;
}

Value run_management(Engine& engine, const std::shared_ptr<ManagementLink>& link,
                     const std::string& operation, Value body, bool none_ok) {
  auto future = management_future(engine, link, operation, std::move(body), none_ok);
  return engine.wait(future, operation + " on " + link->address());
}

}  // namespace metro::sb::detail
