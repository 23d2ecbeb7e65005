#pragma once

// What the public Client, Sender, Receiver and Subscription hold. A sender or receiver keeps the
// engine alive (so it can refuse clearly once the client is closed) and lets its links go when
// the last copy of it is destroyed.

#include <atomic>
#include <memory>
#include <thread>

#include <metro/sb/client.hpp>

#include "engine.hpp"
#include "links.hpp"
#include "management.hpp"

namespace metro::sb {

struct Client::Impl {
  std::shared_ptr<detail::Engine> engine;
};

struct Sender::Impl {
  /// The link is made here, not yet registered with the engine.
  Impl(std::shared_ptr<detail::Engine> e, const std::string& entity)
      : engine(std::move(e)),
        management(engine, entity),
        link(std::make_shared<detail::SenderLink>(*engine, entity)) {}
  ~Impl() {
    (void)engine->post([link = link] { link->release(); });
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  std::shared_ptr<detail::Engine> engine;
  detail::LazyManagement management;
  std::shared_ptr<detail::SenderLink> link;
};

struct Receiver::Impl {
  /// The link is made here, not yet registered with the engine.
  Impl(std::shared_ptr<detail::Engine> e, const std::string& address, ReceiverOptions options)
      : engine(std::move(e)),
        management(engine, address),
        // Automatic lock renewal goes through the entity's $management link.
        link(std::make_shared<detail::ReceiverLink>(
            *engine, address, options,
            options.auto_renew_lock_for.count() > 0 ? management.get() : nullptr)) {}
  ~Impl() {
    (void)engine->post([link = link] { link->release(); });
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  /// Settles on the link it came from, or over $management when fetched by sequence number.
  std::future<void> settle_async(const ReceivedMessage& message, std::uint64_t outcome,
                                 const amqp::Value& annotations, bool undeliverable,
                                 const std::string& reason, const std::string& description);
  void settle(const ReceivedMessage& message, std::uint64_t outcome, const amqp::Value& annotations,
              bool undeliverable, const std::string& reason, const std::string& description);

  std::shared_ptr<detail::Engine> engine;
  detail::LazyManagement management;
  std::shared_ptr<detail::ReceiverLink> link;
};

struct Subscription::State {
  std::atomic<bool> stopping{false};
  std::thread thread;
};

}  // namespace metro::sb
