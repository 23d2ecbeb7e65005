// metro::sb::Client: parses the connection string, starts the engine, and attaches senders and
// receivers. The parts: codec (messages), engine (thread, connection), cbs (tokens), links,
// management, lock_renewer; sender.cpp, receiver.cpp and subscription.cpp are the rest of the
// public API.

#include "completion.hpp"
#include "handles.hpp"

namespace metro::sb {

Client::Client(std::string_view connection_string, ClientOptions options)
    : impl_(std::make_shared<Impl>()) {
  impl_->engine = std::make_shared<detail::Engine>(parse_connection_string(connection_string),
                                                   std::move(options));
  impl_->engine->start();
}

Client::~Client() { close(); }

void Client::close() {
  if (impl_ && impl_->engine) impl_->engine->close();
}

ConnectionState Client::state() const { return impl_->engine->state(); }

namespace {

/// Registers `link` with the engine and waits until it is attached (or refused).
void attach(detail::Engine& engine, const std::shared_ptr<detail::Link>& link,
            const std::string& what) {
  auto attached = std::make_shared<detail::Completion<void>>();
  auto future = attached->future();
  engine.run(
      [e = &engine, link, attached] {
        e->add(link);
        link->when_ready([attached] { attached->set(); },
                         [attached](std::exception_ptr error) { attached->fail(std::move(error)); },
                         e->deadline());
      },
      what);
  engine.wait(future, "attaching a link to " + link->address());
}

}  // namespace

Sender Client::create_sender(const std::string& entity) {
  // Made first: should the attach fail or time out, the link is let go with it.
  auto impl = std::make_shared<Sender::Impl>(impl_->engine, entity);
  attach(*impl_->engine, impl->link, "creating a sender to " + entity);
  return Sender(std::move(impl));
}

Receiver Client::create_receiver(const std::string& entity_path, ReceiverOptions options) {
  auto impl = std::make_shared<Receiver::Impl>(impl_->engine, entity_path, options);
  attach(*impl_->engine, impl->link, "creating a receiver on " + entity_path);
  return Receiver(std::move(impl));
}

}  // namespace metro::sb
