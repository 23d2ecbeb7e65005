#pragma once

// The links a client opens on its connection, as types: a SenderLink sends messages, a
// ReceiverLink receives them into a buffer callers take from and settles them, a ManagementLink
// carries $management requests and their replies. Everything they send has a deadline; what
// outlives it fails with TimeoutError and is forgotten.
//
// Thread domains: everything here runs on the engine's event thread, except a ReceiverLink's
// buffer (messages received and not yet taken, and the callbacks waiting for them), which
// callers reach under its own mutex.

#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <metro/sb/client.hpp>

#include "../amqp/message.hpp"
#include "../common/thread_annotations.hpp"
#include "codec.hpp"
#include "lock_renewer.hpp"

struct pn_link_t;
struct pn_delivery_t;
struct pn_session_t;

namespace metro::sb::detail {

class Engine;
class ManagementLink;

using SteadyClock = std::chrono::steady_clock;
using TimePoint = SteadyClock::time_point;
/// A completion callback: null error on success.
using Done = std::function<void(std::exception_ptr)>;

std::exception_ptr error_for(const std::string& condition, const std::string& description,
                             int status = 0);
std::exception_ptr connection_lost(const std::string& why);
std::exception_ptr timed_out(const std::string& what, milliseconds after);

/// The oldest thing sent to the peer that reached its deadline with no answer, in one tick: a
/// sign the peer may have gone silent.
struct Unanswered {
  std::optional<TimePoint> oldest_sent;
  std::string what;
  void note(TimePoint sent, const std::string& description) {
    if (!oldest_sent || sent < *oldest_sent) {
      oldest_sent = sent;
      what = description;
    }
  }
};

/// Messages to send on one Proton link: waiting for credit, then waiting for the peer's outcome,
/// each until its deadline.
class Outbox {
 public:
  void push(std::string bytes, Done done, TimePoint deadline, std::string what);
  /// Sends what credit allows.
  void flush(pn_link_t* link);
  /// The completion of a sent delivery, removed; empty when it is not waited for (any more).
  std::optional<Done> take(pn_delivery_t* delivery);
  bool empty() const { return backlog_.empty() && in_flight_.empty(); }
  void fail_all(const std::exception_ptr& error);
  /// Only what was sent and not answered fails (what waits for credit keeps waiting).
  void fail_sent(const std::exception_ptr& error);
  void expire(TimePoint now, milliseconds timeout, Unanswered& unanswered);

 private:
  struct Entry {
    std::string bytes;
    Done done;
    TimePoint deadline;
    TimePoint sent;
    std::string what;
  };
  std::deque<Entry> backlog_;
  std::map<pn_delivery_t*, Entry> in_flight_;
  std::uint64_t tag_ = 0;
};

/// Requests answered by a reply whose correlation-id is the request's message-id.
class Requests {
 public:
  using Answer = std::function<void(std::exception_ptr, const amqp::Message*)>;
  /// A new message-id for a request.
  std::string add(Answer answer, TimePoint deadline, std::string what);
  /// Hands the reply (or the error) to the request it answers; false when none waits for it.
  bool answer(const std::string& id, const amqp::Message* reply, std::exception_ptr error);
  /// Takes a complete reply delivery off its receiving link (accepted, settled, credit topped up
  /// to 100) and answers its request; one that cannot be decoded fails the request it names with
  /// "`what` could not be decoded".
  void receive_reply(pn_delivery_t* d, const char* what);
  bool empty() const { return entries_.empty(); }
  void fail_all(const std::exception_ptr& error);
  void expire(TimePoint now, milliseconds timeout, Unanswered& unanswered);

 private:
  struct Entry {
    Answer answer;
    TimePoint deadline;
    TimePoint sent;
    std::string what;
  };
  std::map<std::string, Entry> entries_;
  std::uint64_t next_ = 0;
};

/// What every link does: attach (authorised over $cbs) when the connection is open and again
/// after every reconnect, run operations once attached, fail them when it cannot.
class Link : public std::enable_shared_from_this<Link> {
 public:
  Link(Engine& engine, std::string address) : engine_(engine), address_(std::move(address)) {}
  virtual ~Link() = default;
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  /// The entity (immutable).
  const std::string& address() const { return address_; }

  // ---- Event thread ----
  bool ready() const { return ready_; }
  /// Attaches on the open connection, unless attached or attaching.
  void attach();
  /// Runs `run` once attached; `fail` gets why it cannot be (refused, or `deadline` passed).
  void when_ready(std::function<void()> run, Done fail, TimePoint deadline);
  /// Its public handle is gone: nothing new comes; it is detached once nothing is pending.
  void release() { released_ = true; }
  bool finished() const { return released_ && idle(); }
  /// Closes its Proton links (the connection being open) and forgets them.
  void detach();
  /// The connection is gone: what was under way fails with `error`; waiting operations wait for
  /// the next connection (until their deadlines).
  void lost(const std::exception_ptr& error);
  /// The client is closed: everything, waiting operations included, fails with `error`.
  void close(const std::exception_ptr& error) {
    lost(error);
    fail_waiting(error);
  }
  /// Fails what has passed its deadline; notes what went out and got no answer.
  virtual void tick(TimePoint now, Unanswered& unanswered);

  void on_remote_open(pn_link_t* link);
  void on_remote_close(pn_link_t* link);
  virtual void on_flow(pn_link_t* link) = 0;
  virtual void on_delivery(pn_delivery_t* delivery) = 0;
  /// The events of one batch (what one read from the socket brought) have all been handled: act
  /// once on what they changed. Called for links that asked with Engine::after_batch.
  virtual void on_batch_end() {}

 protected:
  /// The path its token is for.
  virtual std::string node() const { return address_; }
  /// Creates and opens its Proton link(s), with this as their context.
  virtual void open_links(pn_session_t* session) = 0;
  virtual std::vector<pn_link_t*> links() const = 0;
  virtual void forget_links() = 0;
  /// Nothing is pending.
  virtual bool idle() const = 0;
  /// Everything under way fails.
  virtual void fail_pending(const std::exception_ptr& error) = 0;
  virtual void on_ready() {}

  Engine& engine_;
  const std::string address_;
  std::uint64_t attachment_ = 0;  // counts attaches: deliveries of an older one are gone

 private:
  void fail_waiting(const std::exception_ptr& error);
  struct Waiting {
    std::function<void()> run;
    Done fail;
    TimePoint deadline;
  };
  std::deque<Waiting> waiting_;
  bool ready_ = false;
  bool attaching_ = false;
  bool released_ = false;
};

class SenderLink : public Link {
 public:
  using Link::Link;
  /// Sends encoded messages; `done` once every one was accepted, or with the first error.
  void send(std::vector<std::string> messages, Done done, TimePoint deadline);
  void on_flow(pn_link_t* link) override;
  void on_delivery(pn_delivery_t* delivery) override;
  void tick(TimePoint now, Unanswered& unanswered) override;

 protected:
  void open_links(pn_session_t* session) override;
  std::vector<pn_link_t*> links() const override { return {link_}; }
  void forget_links() override { link_ = nullptr; }
  bool idle() const override { return outbox_.empty(); }
  void fail_pending(const std::exception_ptr& error) override { outbox_.fail_sent(error); }

 private:
  pn_link_t* link_ = nullptr;
  Outbox outbox_;
};

class ManagementLink : public Link {
 public:
  using Link::Link;
  using Answer = std::function<void(std::exception_ptr, codec::Reply)>;
  /// Sends `operation` with `body`; `answer` gets the reply, or why there is none.
  void request(const std::string& operation, amqp::Value body, Answer answer, TimePoint deadline);
  void on_flow(pn_link_t* link) override;
  void on_delivery(pn_delivery_t* delivery) override;
  void tick(TimePoint now, Unanswered& unanswered) override;

 protected:
  std::string node() const override { return address_ + "/$management"; }
  void open_links(pn_session_t* session) override;
  std::vector<pn_link_t*> links() const override { return {requests_link_, replies_link_}; }
  void forget_links() override { requests_link_ = replies_link_ = nullptr; }
  bool idle() const override { return outbox_.empty() && requests_.empty(); }
  void fail_pending(const std::exception_ptr& error) override;

 private:
  pn_link_t* requests_link_ = nullptr;
  pn_link_t* replies_link_ = nullptr;
  std::string reply_to_;
  Outbox outbox_;
  Requests requests_;
};

class ReceiverLink;

/// A received message's way back to its link: valid while the link stays attached as it was.
struct DeliveryRef {
  std::weak_ptr<ReceiverLink> link;
  pn_delivery_t* delivery = nullptr;
  std::uint64_t attachment = 0;
  std::optional<amqp::Uuid> lock;  ///< Set for messages fetched by sequence number.
};

class ReceiverLink : public Link {
 public:
  /// `management` renews locks when `options.auto_renew_lock_for` is set.
  ReceiverLink(Engine& engine, std::string address, ReceiverOptions options,
               std::shared_ptr<ManagementLink> management);
  const ReceiverOptions& options() const { return options_; }

  // ---- Any thread ----
  /// A callback waiting for messages (receive_async). Only one `exclusive` one at a time.
  struct Waiter {
    std::size_t max = 0;
    TimePoint deadline;
    std::function<void(std::vector<ReceivedMessage>)> callback;
    bool exclusive = false;
  };
  /// Up to `max` buffered messages, waiting up to `timeout` for the first (not after close).
  std::vector<ReceivedMessage> take(std::size_t max, milliseconds timeout) EXCLUDES(mutex_);
  /// Buffered messages for `waiter` when there are any, else nullopt and it waits. Throws
  /// InvalidArgument for a second exclusive waiter.
  std::optional<std::vector<ReceivedMessage>> take_or_wait(Waiter waiter) EXCLUDES(mutex_);
  /// Removes the exclusive waiter; true when one was waiting.
  bool cancel_exclusive() EXCLUDES(mutex_);
  /// The client is closed: waiters get an empty answer, blocked takes return.
  void close_buffer() EXCLUDES(mutex_);

  // ---- Event thread ----
  /// Credit for up to `max` messages (receivers without prefetch).
  void grant(std::size_t max) EXCLUDES(mutex_);
  /// Keeps credit + buffer at the prefetch count (receivers with prefetch).
  void top_up() EXCLUDES(mutex_);
  /// Settles a delivery of this link; LockLostError when its link or connection is gone.
  void settle(const DeliveryRef& ref, std::uint64_t outcome, const amqp::Value& annotations,
              bool undeliverable, const std::string& reason, const std::string& description,
              Done done, TimePoint deadline);
  void on_flow(pn_link_t*) override {}
  void on_delivery(pn_delivery_t* delivery) override;
  /// Hands what arrived in the batch to the waiters at once: a waiter gets every message that
  /// came in one read, not the first of them (one hand-off per batch, not per message).
  void on_batch_end() override;
  void tick(TimePoint now, Unanswered& unanswered) override;

 protected:
  void open_links(pn_session_t* session) override;
  std::vector<pn_link_t*> links() const override { return {link_}; }
  void forget_links() override;
  bool idle() const override { return settlements_.empty(); }
  void fail_pending(const std::exception_ptr& error) override;
  void on_ready() override;

 private:
  void on_message(pn_delivery_t* delivery, std::string bytes);
  void on_settled(pn_delivery_t* delivery);
  /// Hands buffered messages to waiting callbacks (calls them outside the lock).
  void serve_waiters() EXCLUDES(mutex_);

  const ReceiverOptions options_;
  pn_link_t* link_ = nullptr;
  bool arrived_in_batch_ = false;       // messages buffered since the last on_batch_end
  std::size_t last_grant_ = 0;          // credit last asked for (receivers without prefetch)
  std::set<pn_delivery_t*> unsettled_;  // deliveries that may still be settled
  struct Settlement {
    Done done;
    TimePoint deadline;
    TimePoint sent;
  };
  std::map<pn_delivery_t*, Settlement> settlements_;  // dispositions awaiting the peer's
  LockRenewer renewer_;

  Mutex mutex_;
  CondVar arrived_;
  std::deque<ReceivedMessage> buffer_ GUARDED_BY(mutex_);
  std::deque<Waiter> waiters_ GUARDED_BY(mutex_);
  bool closed_ GUARDED_BY(mutex_) = false;
};

}  // namespace metro::sb::detail
