#pragma once

// The client's engine: one thread runs a Proton proactor that owns the connection and every link
// on it. Other threads hand it work with `post`, which refuses once the client is closing.
// It connects, reconnects with backoff and jitter, watches that the peer is not silent (no frame
// for the idle timeout, or requests outliving their deadlines with nothing heard), and reports
// each change of connection state once, in the log and to `on_state_change`.
//
// Thread domains: `mutex_` guards what callers share with the event thread (the task queue,
// the state, whether it is closing, the connection a wake may reach). Everything under
// "event thread" belongs to the event thread alone; links and $cbs live there.

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <metro/sb/client.hpp>

#include "../amqp/proton_handles.hpp"
#include "../common/thread_annotations.hpp"
#include "cbs.hpp"
#include "links.hpp"

struct pn_connection_t;
struct pn_event_t;

namespace metro::sb::detail {

class Engine : public std::enable_shared_from_this<Engine> {
 public:
  Engine(ConnectionString cs, ClientOptions options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  /// Makes the proactor (and TLS domain), starts connecting and the event thread. Throws
  /// InvalidArgument when the CA file cannot be loaded; what it made is freed.
  void start();

  // ---- Any thread ----
  /// Runs `task` on the event thread; false (and the task dropped) once closing has begun.
  [[nodiscard]] bool post(std::function<void()> task) EXCLUDES(mutex_);
  /// `post`, or ClientClosedError saying that `what` cannot be done.
  void run(std::function<void()> task, const std::string& what);
  /// Closes the links and the connection and stops the event thread (waits for it, unless
  /// called on it). Idempotent; concurrent callers wait for the first.
  void close() EXCLUDES(mutex_);
  bool closed() const EXCLUDES(mutex_);
  ConnectionState state() const EXCLUDES(mutex_);
  const ClientOptions& options() const { return options_; }
  const ConnectionString& connection_string() const { return cs_; }
  /// When an operation started now must be done by.
  TimePoint deadline() const { return SteadyClock::now() + options_.operation_timeout; }
  /// Waits for `future` up to the operation timeout; TimeoutError naming `what` after that.
  /// (A tick longer, so that the event thread's own deadline, which says more, usually answers.)
  template <typename T>
  T wait(std::future<T>& future, const std::string& what) {
    if (future.wait_for(options_.operation_timeout + tick_interval()) !=
        std::future_status::ready) {
      throw TimeoutError("com.microsoft:timeout",
                         what + " did not finish within " +
                             std::to_string(options_.operation_timeout.count()) + " ms",
                         true);
    }
    return future.get();
  }
  /// A ClientClosedError naming what cannot be done.
  static ClientClosedError closed_error(const std::string& what);
  /// How often deadlines and silence are checked: a quarter of the idle timeout, at most 1 s.
  std::chrono::milliseconds tick_interval() const;

  // ---- Event thread ----
  /// Keeps `link` and attaches it (now when the connection is open, else once it is).
  void add(const std::shared_ptr<Link>& link);
  bool open() const { return open_; }
  /// Counts connections: what belongs to an older one is gone.
  std::uint64_t generation() const { return generation_; }
  pn_connection_t* connection() const { return connection_; }
  Cbs& cbs() { return cbs_; }
  /// Calls `link->on_batch_end()` once the events of the batch under way are handled.
  void after_batch(std::shared_ptr<Link> link) { batch_end_.push_back(std::move(link)); }

 private:
  void run_loop();
  bool handle(pn_event_t* event);
  void run_tasks() EXCLUDES(mutex_);
  /// Calls what asked for the end of the batch (after_batch).
  void end_batch();
  void connect();
  void tick();
  /// Notes when a frame last arrived.
  void note_input();
  /// Drops the connection now, without a close handshake (the peer may not answer one).
  void abort(const std::string& why);
  void lost(const std::string& why);
  void set_state(ConnectionState state, const std::string& why) EXCLUDES(mutex_);
  /// Detaches and forgets released links with nothing pending.
  void sweep();
  std::string peer() const;

  const ConnectionString cs_;
  const ClientOptions options_;

  // ---- Event thread ----
  amqp::ProactorPtr proactor_;  // made by start(), freed by the destructor after the join
  amqp::SslDomainPtr ssl_domain_;
  pn_connection_t* connection_ = nullptr;  // owned by the proactor
  std::uint64_t generation_ = 0;
  bool open_ = false;
  std::chrono::milliseconds backoff_{0};
  int attempts_ = 0;  // connections made since one was last open
  bool ever_connected_ = false;
  TimePoint reconnect_at_;
  TimePoint connect_started_;
  TimePoint down_since_;
  TimePoint last_input_;            // the last time a frame arrived
  std::uint64_t frames_input_ = 0;  // frames received on the current connection
  std::string abort_reason_;
  bool tick_due_ = false;
  std::map<Link*, std::shared_ptr<Link>> links_;
  std::vector<std::shared_ptr<Link>> batch_end_;  // after_batch, for this batch
  Cbs cbs_;

  // ---- Shared ----
  std::mutex close_mutex_;  // one close() at a time
  mutable Mutex mutex_;
  std::deque<std::function<void()>> tasks_ GUARDED_BY(mutex_);
  bool closing_ GUARDED_BY(mutex_) = false;
  ConnectionState state_ GUARDED_BY(mutex_) = ConnectionState::kConnecting;
  pn_connection_t* wakeable_ GUARDED_BY(mutex_) = nullptr;  // valid until its transport closes
  std::thread thread_;
};

}  // namespace metro::sb::detail
