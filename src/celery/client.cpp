// The Celery client: a broker pool on the callers' threads, and one thread for outcomes that owns
// the result backend's pub/sub and command connections (see client.hpp for the design).

#include "client.hpp"

#include <algorithm>
#include <cerrno>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <metro/error.hpp>

#include "../common/thread_annotations.hpp"
#include "redis_connection.hpp"

namespace metro::celery {
namespace {

constexpr std::string_view kChannelPrefix = "celery-task-meta-";
/// The longest the client's thread sleeps without looking at deadlines.
constexpr milliseconds kLongestPoll{1000};

/// An eventfd that wakes the client's thread out of poll().
class WakeFd {
 public:
  WakeFd() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (fd_ < 0) throw Error("cannot create an eventfd for the Celery client", false);
  }
  ~WakeFd() { ::close(fd_); }
  WakeFd(const WakeFd&) = delete;
  WakeFd& operator=(const WakeFd&) = delete;

  void signal() const {
    std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(fd_, &one, sizeof(one));
  }
  void drain() const {
    std::uint64_t count = 0;
    [[maybe_unused]] auto n = ::read(fd_, &count, sizeof(count));
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

/// Text from outside (Redis errors) made safe for one log line.
std::string printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 2048)) {
    out += static_cast<unsigned char>(c) < 0x20 || c == 0x7f ? '?' : c;
  }
  return out;
}

std::string duration_text(milliseconds d) {
  auto ms = d.count();
  if (ms % 3'600'000 == 0 && ms > 0) return std::to_string(ms / 3'600'000) + "h";
  if (ms % 60'000 == 0 && ms > 0) return std::to_string(ms / 60'000) + "m";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

milliseconds jittered(milliseconds backoff) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  auto half = backoff.count() / 2;
  std::uniform_int_distribution<long long> spread(0, half > 0 ? half : 0);
  return milliseconds(backoff.count() - half + spread(rng));
}

milliseconds next_backoff(milliseconds current, const ClientOptions& options) {
  if (current.count() == 0) return options.min_backoff;
  return std::min(current * 2, options.max_backoff);
}

/// Broker connections: taken by the thread that sends, given back when healthy. After a failed
/// connect, connecting again waits out a growing backoff, and senders fail at once meanwhile.
class BrokerPool {
 public:
  explicit BrokerPool(const ClientOptions& options) : options_(options) {}

  std::unique_ptr<RedisConnection> acquire() {
    {
      MutexLock lock(mutex_);
      if (!idle_.empty()) {
        auto c = std::move(idle_.back());
        idle_.pop_back();
        return c;
      }
      if (Clock::now() < retry_after_) {
        if (last_was_auth_) throw RedisAuthError(last_error_);
        throw RedisError(last_error_, true);
      }
    }
    try {
      auto c = RedisConnection::connect(options_.broker, Clock::now() + options_.connect_timeout,
                                        options_.max_reply_bytes);
      MutexLock lock(mutex_);
      if (backoff_.count() != 0) {
        spdlog::info("celery: broker {} reachable again", options_.broker.redacted());
      }
      backoff_ = milliseconds(0);
      return c;
    } catch (const RedisError& e) {
      MutexLock lock(mutex_);
      if (backoff_.count() == 0 || last_error_ != e.what()) {
        spdlog::warn("celery: broker {}: {}", options_.broker.redacted(), printable(e.what()));
      }
      backoff_ = next_backoff(backoff_, options_);
      retry_after_ = Clock::now() + jittered(backoff_);
      last_error_ = e.what();
      last_was_auth_ = dynamic_cast<const RedisAuthError*>(&e) != nullptr;
      throw;
    }
  }

  void release(std::unique_ptr<RedisConnection> connection) {
    if (!connection->healthy()) return;
    MutexLock lock(mutex_);
    if (idle_.size() < options_.broker_connections) idle_.push_back(std::move(connection));
  }

 private:
  const ClientOptions& options_;
  Mutex mutex_;
  std::vector<std::unique_ptr<RedisConnection>> idle_ GUARDED_BY(mutex_);
  Clock::time_point retry_after_ GUARDED_BY(mutex_){};
  milliseconds backoff_ GUARDED_BY(mutex_){0};
  std::string last_error_ GUARDED_BY(mutex_);
  bool last_was_auth_ GUARDED_BY(mutex_) = false;
};

struct Pending {
  /// Wakes the thread waiting for this task's subscription (only that one: a confirmation
  /// should not wake every sender). Shared, so that it outlives the entry for that waiter.
  std::shared_ptr<CondVar> subscription_changed = std::make_shared<CondVar>();
  OutcomeCallback done;
  ProgressCallback progress;
  milliseconds result_timeout{0};
  bool subscribed = false;
  bool sent = false;        // In Redis: the deadline runs.
  bool needs_read = false;  // Read the key once subscribed (a task sent earlier).
  Deadline deadline = Deadline::max();
  int retries = 0;
  TaskMeta last;
};

/// A callback to run once the lock is released.
struct Notice {
  OutcomeCallback done;
  TaskOutcome outcome;
  ProgressCallback progress;
  TaskProgress step;
};

}  // namespace

std::string_view to_string(TaskOutcome::Status status) {
  switch (status) {
    case TaskOutcome::Status::kSucceeded:
      return "succeeded";
    case TaskOutcome::Status::kFailed:
      return "failed";
    case TaskOutcome::Status::kTimedOut:
      return "timed out";
    case TaskOutcome::Status::kUnavailable:
      return "unavailable";
    case TaskOutcome::Status::kRefused:
      return "refused";
    case TaskOutcome::Status::kClosed:
      return "closed";
  }
  return "unavailable";
}

struct Client::Impl {
  enum class Link { kConnecting, kUp, kDown };

  ClientOptions options;
  BrokerPool pool{options};
  WakeFd wake;

  mutable Mutex mutex;
  std::map<std::string, Pending> pending GUARDED_BY(mutex);
  std::vector<std::string> to_subscribe GUARDED_BY(mutex);
  std::vector<std::string> to_unsubscribe GUARDED_BY(mutex);
  Link link GUARDED_BY(mutex) = Link::kConnecting;
  std::string link_error GUARDED_BY(mutex);
  bool link_auth_error GUARDED_BY(mutex) = false;
  bool closing GUARDED_BY(mutex) = false;
  ClientStats counters GUARDED_BY(mutex);

  Mutex join_mutex;
  std::thread thread;

  // Only the client's thread touches these.
  std::unique_ptr<RedisConnection> sub;
  std::unique_ptr<RedisConnection> cmd;
  std::set<std::string> awaiting;  // Subscriptions of a reconnect not yet confirmed.
  Deadline awaiting_deadline{};
  bool reconcile_when_confirmed = false;
  Deadline next_reconcile{};
  Deadline next_attempt{};
  milliseconds backoff{0};
  bool ever_connected = false;
  std::string logged_error;

  explicit Impl(ClientOptions o) : options(std::move(o)) {
    thread = std::thread([this] { loop(); });
  }

  /// Wakes every thread waiting for a subscription (the link changed, or the client closes).
  void wake_all_subscribers() REQUIRES(mutex) {
    for (auto& [id, p] : pending) p.subscription_changed->notify_all();
  }

  /// Removes a task, waking a thread that may still wait for its subscription.
  std::map<std::string, Pending>::iterator erase(std::map<std::string, Pending>::iterator it)
      REQUIRES(mutex) {
    it->second.subscription_changed->notify_all();
    return pending.erase(it);
  }

  // ---- callers' side ------------------------------------------------------------------------

  static TaskOutcome ended(const std::string& id, TaskOutcome::Status status, std::string error) {
    TaskOutcome out;
    out.status = status;
    out.task_id = id;
    out.error = std::move(error);
    return out;
  }

  void count(const TaskOutcome& outcome) REQUIRES(mutex) {
    switch (outcome.status) {
      case TaskOutcome::Status::kSucceeded:
        ++counters.succeeded;
        break;
      case TaskOutcome::Status::kFailed:
        if (outcome.meta.state == TaskState::kRevoked) {
          ++counters.revoked;
        } else {
          ++counters.failed;
        }
        break;
      case TaskOutcome::Status::kTimedOut:
        ++counters.timed_out;
        break;
      case TaskOutcome::Status::kUnavailable:
      case TaskOutcome::Status::kRefused:
        ++counters.unavailable;
        break;
      case TaskOutcome::Status::kClosed:
        break;
    }
  }

  /// Ends a task that is still pending; false when something else ended it first.
  bool end_pending(const std::string& id, const TaskOutcome& outcome) EXCLUDES(mutex) {
    OutcomeCallback done;
    {
      MutexLock lock(mutex);
      auto it = pending.find(id);
      if (it == pending.end()) return false;
      done = std::move(it->second.done);
      if (it->second.subscribed) to_unsubscribe.push_back(id);
      erase(it);
      count(outcome);
    }
    wake.signal();
    if (done) done(outcome);
    return true;
  }

  /// Registers a task and waits until its channel is subscribed. False (and `done` was called)
  /// when it cannot be.
  bool register_and_subscribe(const std::string& id, Pending entry) EXCLUDES(mutex) {
    std::optional<TaskOutcome> refused;
    std::shared_ptr<CondVar> signal;
    {
      MutexLock lock(mutex);
      if (closing) {
        refused = ended(id, TaskOutcome::Status::kClosed, "the Celery client is closed");
      } else if (pending.count(id) != 0) {
        refused = ended(id, TaskOutcome::Status::kRefused,
                        "a task with the id " + id + " is already in flight");
      } else if (link == Link::kDown) {
        refused = ended(
            id, link_auth_error ? TaskOutcome::Status::kRefused : TaskOutcome::Status::kUnavailable,
            "the result backend cannot be reached: " + link_error);
      }
      if (refused) {
        count(*refused);
      } else {
        signal = entry.subscription_changed;
        pending.emplace(id, std::move(entry));
        to_subscribe.push_back(id);
      }
    }
    if (refused) {
      refused->sent = entry.sent;  // A task watched was sent earlier.
      if (entry.done) entry.done(*refused);
      return false;
    }
    wake.signal();
    auto deadline = Clock::now() + options.connect_timeout + options.command_timeout;
    std::optional<TaskOutcome> failed;
    {
      MutexLock lock(mutex);
      while (true) {
        auto it = pending.find(id);
        if (it == pending.end()) return false;  // Ended meanwhile (closed).
        if (it->second.subscribed) return true;
        if (link == Link::kDown) {
          failed = ended(
              id,
              link_auth_error ? TaskOutcome::Status::kRefused : TaskOutcome::Status::kUnavailable,
              "the result backend cannot be reached: " + link_error);
          break;
        }
        if (signal->wait_until(lock, deadline) == std::cv_status::timeout &&
            Clock::now() >= deadline) {
          failed = ended(id, TaskOutcome::Status::kUnavailable,
                         "the result backend did not confirm the subscription to " +
                             std::string(kChannelPrefix) + id + " within " +
                             duration_text(options.connect_timeout + options.command_timeout));
          break;
        }
      }
    }
    end_pending(id, *failed);
    return false;
  }

  std::string submit(const TaskMessage& message, milliseconds result_timeout, OutcomeCallback done,
                     ProgressCallback progress) {
    TaskMessage m = message;
    if (m.id.empty()) m.id = new_task_id();
    const std::string id = m.id;
    Envelope envelope;
    try {
      envelope = encode_task_message(m);
    } catch (const InvalidArgument& e) {
      auto outcome = ended(id, TaskOutcome::Status::kRefused, e.what());
      {
        MutexLock lock(mutex);
        count(outcome);
      }
      if (done) done(outcome);
      return id;
    }
    Pending entry;
    entry.done = std::move(done);
    entry.progress = std::move(progress);
    entry.result_timeout = result_timeout;
    if (!register_and_subscribe(id, std::move(entry))) return id;

    std::optional<TaskOutcome> failed;
    try {
      auto connection = pool.acquire();
      auto reply = connection->command({"LPUSH", envelope.key, envelope.payload},
                                       Clock::now() + options.command_timeout);
      pool.release(std::move(connection));
      if (reply.is_error()) {
        bool permanent = reply.text.rfind("WRONGTYPE", 0) == 0;
        failed = ended(
            id, permanent ? TaskOutcome::Status::kRefused : TaskOutcome::Status::kUnavailable,
            "the broker " + options.broker.endpoint() + " refused the message: " + reply.text);
      }
    } catch (const RedisError& e) {
      // A push whose reply was lost may have reached Redis; the task may then run although it
      // counts as not sent here, and runs again on the retry (delivery is at least once).
      failed = ended(
          id, e.is_transient() ? TaskOutcome::Status::kUnavailable : TaskOutcome::Status::kRefused,
          e.what());
    }
    if (failed) {
      end_pending(id, *failed);
      return id;
    }
    {
      MutexLock lock(mutex);
      ++counters.sent;
      if (auto it = pending.find(id); it != pending.end()) {
        it->second.sent = true;
        it->second.deadline = Clock::now() + result_timeout;
      }
    }
    // The client's thread looks at deadlines at least every second; only a shorter timeout needs
    // to wake it now.
    if (result_timeout < kLongestPoll) wake.signal();
    return id;
  }

  void watch(const std::string& id, milliseconds result_timeout, OutcomeCallback done,
             ProgressCallback progress) {
    Pending entry;
    entry.done = std::move(done);
    entry.progress = std::move(progress);
    entry.result_timeout = result_timeout;
    entry.sent = true;
    entry.needs_read = true;
    entry.deadline = Clock::now() + result_timeout;
    register_and_subscribe(id, std::move(entry));
  }

  // ---- the client's thread -----------------------------------------------------------------

  void loop() {
    while (true) {
      {
        MutexLock lock(mutex);
        if (closing) break;
      }
      std::vector<Notice> notices;
      try {
        if (!sub && Clock::now() >= next_attempt) connect(notices);
        if (sub) {
          flush_subscriptions();
          wait_for_input();
          read_replies(notices);
          if (!awaiting.empty() && Clock::now() >= awaiting_deadline) {
            throw RedisError("Redis at " + options.result_backend.endpoint() +
                                 ": subscriptions were not confirmed in time",
                             true);
          }
          if (Clock::now() >= next_reconcile) reconcile_all(notices);
        } else {
          wait_for_input();
        }
      } catch (const RedisError& e) {
        lost(e);
      }
      expire(notices);
      deliver(notices);
    }
    shut_down();
  }

  void deliver(std::vector<Notice>& notices) {
    for (auto& n : notices) {
      try {
        if (n.done) n.done(n.outcome);
        if (n.progress) n.progress(n.step);
      } catch (const std::exception& e) {
        spdlog::error("celery: a task callback threw: {}", printable(e.what()));
      }
    }
    notices.clear();
  }

  void connect(std::vector<Notice>& notices) {
    {
      MutexLock lock(mutex);
      if (link == Link::kDown) link = Link::kConnecting;
    }
    auto deadline = Clock::now() + options.connect_timeout;
    sub = RedisConnection::connect(options.result_backend, deadline, options.max_reply_bytes);
    cmd = RedisConnection::connect(options.result_backend, deadline, options.max_reply_bytes);
    std::vector<std::string> ids;
    {
      MutexLock lock(mutex);
      for (auto& [id, p] : pending) {
        p.subscribed = false;
        ids.push_back(id);
      }
      to_subscribe.clear();
      link = Link::kUp;
      link_error.clear();
      link_auth_error = false;
      if (ever_connected) ++counters.reconnects;
    }
    if (ever_connected || !logged_error.empty()) {
      spdlog::info("celery: result backend {} connected", options.result_backend.redacted());
    }
    ever_connected = true;
    logged_error.clear();
    backoff = milliseconds(0);
    awaiting = std::set<std::string>(ids.begin(), ids.end());
    awaiting_deadline = Clock::now() + options.command_timeout;
    reconcile_when_confirmed = !ids.empty();
    subscribe(ids);
    next_reconcile = Clock::now() + options.reconcile_interval;
    (void)notices;
  }

  void lost(const RedisError& e) {
    sub.reset();
    cmd.reset();
    awaiting.clear();
    reconcile_when_confirmed = false;
    backoff = next_backoff(backoff, options);
    next_attempt = Clock::now() + jittered(backoff);
    bool auth = dynamic_cast<const RedisAuthError*>(&e) != nullptr;
    {
      MutexLock lock(mutex);
      link = Link::kDown;
      link_error = e.what();
      link_auth_error = auth;
      for (auto& [id, p] : pending) p.subscribed = false;
      wake_all_subscribers();
    }
    if (logged_error != e.what()) {
      spdlog::warn("celery: result backend {}: {}; connecting again with backoff",
                   options.result_backend.redacted(), printable(e.what()));
      logged_error = e.what();
    }
  }

  void subscribe(const std::vector<std::string>& ids) {
    for (std::size_t at = 0; at < ids.size(); at += 500) {
      std::vector<std::string> command{"SUBSCRIBE"};
      for (std::size_t i = at; i < std::min(ids.size(), at + 500); ++i) {
        command.push_back(std::string(kChannelPrefix) + ids[i]);
      }
      sub->write(command, Clock::now() + options.command_timeout);
    }
  }

  void flush_subscriptions() {
    std::vector<std::string> add;
    std::vector<std::string> remove;
    {
      MutexLock lock(mutex);
      add.swap(to_subscribe);
      remove.swap(to_unsubscribe);
    }
    subscribe(add);
    for (std::size_t at = 0; at < remove.size(); at += 500) {
      std::vector<std::string> command{"UNSUBSCRIBE"};
      for (std::size_t i = at; i < std::min(remove.size(), at + 500); ++i) {
        command.push_back(std::string(kChannelPrefix) + remove[i]);
      }
      sub->write(command, Clock::now() + options.command_timeout);
    }
  }

  void wait_for_input() {
    auto until = next_reconcile;
    if (!sub) until = next_attempt;
    {
      MutexLock lock(mutex);
      for (const auto& [id, p] : pending) {
        if (p.sent) until = std::min(until, p.deadline);
      }
      if (!to_subscribe.empty() || !to_unsubscribe.empty()) until = Clock::now();
    }
    if (!awaiting.empty()) until = std::min(until, awaiting_deadline);
    auto left = std::chrono::duration_cast<milliseconds>(until - Clock::now()).count();
    int timeout = static_cast<int>(std::clamp<long long>(left, 0, kLongestPoll.count()));
    pollfd fds[2] = {{wake.fd(), POLLIN, 0}, {sub ? sub->fd() : -1, POLLIN, 0}};
    int n = ::poll(fds, sub ? 2 : 1, timeout);
    if (n > 0 && (fds[0].revents & POLLIN) != 0) wake.drain();
  }

  static std::optional<std::string> id_of(const std::string& channel) {
    if (channel.rfind(kChannelPrefix, 0) != 0) return std::nullopt;
    return channel.substr(kChannelPrefix.size());
  }

  void read_replies(std::vector<Notice>& notices) {
    std::vector<std::string> to_read;
    while (auto reply = sub->read(Clock::now())) {
      if (reply->type != Reply::Type::kArray || reply->elements.size() < 3) continue;
      const auto& kind = reply->elements[0].text;
      auto id = id_of(reply->elements[1].text);
      if (!id) continue;
      if (kind == "message") {
        handle_meta(*id, reply->elements[2].text, false, notices);
      } else if (kind == "subscribe") {
        {
          MutexLock lock(mutex);
          if (auto it = pending.find(*id); it != pending.end()) {
            it->second.subscribed = true;
            if (it->second.needs_read) {
              it->second.needs_read = false;
              to_read.push_back(*id);
            }
            it->second.subscription_changed->notify_all();
          } else {
            to_unsubscribe.push_back(*id);  // Ended while subscribing.
          }
        }
        awaiting.erase(*id);
      }
    }
    if (reconcile_when_confirmed && awaiting.empty()) {
      reconcile_when_confirmed = false;
      reconcile_all(notices);
    } else if (!to_read.empty()) {
      reconcile(to_read, notices);
    }
  }

  /// Reads the keys of every task in flight (or waiting to be read).
  void reconcile_all(std::vector<Notice>& notices) {
    std::vector<std::string> ids;
    {
      MutexLock lock(mutex);
      for (auto& [id, p] : pending) {
        if (p.sent || p.needs_read) ids.push_back(id);
        p.needs_read = false;
      }
    }
    sub->write({"PING"}, Clock::now() + options.command_timeout);  // Finds a dead connection.
    reconcile(ids, notices);
    next_reconcile = Clock::now() + options.reconcile_interval;
  }

  void reconcile(const std::vector<std::string>& ids, std::vector<Notice>& notices) {
    for (std::size_t at = 0; at < ids.size(); at += options.reconcile_batch) {
      auto end = std::min(ids.size(), at + options.reconcile_batch);
      std::vector<std::string> command{"MGET"};
      for (std::size_t i = at; i < end; ++i)
        command.push_back(std::string(kChannelPrefix) + ids[i]);
      Reply reply;
      try {
        reply = cmd->command(command, Clock::now() + options.command_timeout);
      } catch (const RedisReplyTooLarge&) {
        cmd =
            RedisConnection::connect(options.result_backend, Clock::now() + options.connect_timeout,
                                     options.max_reply_bytes);
        read_one_by_one({ids.begin() + static_cast<std::ptrdiff_t>(at),
                         ids.begin() + static_cast<std::ptrdiff_t>(end)},
                        notices);
        continue;
      }
      if (reply.type != Reply::Type::kArray) {
        throw RedisError("Redis at " + options.result_backend.endpoint() +
                             " answered MGET with something else: " + printable(reply.text),
                         false);
      }
      for (std::size_t i = 0; i < reply.elements.size() && at + i < end; ++i) {
        if (reply.elements[i].type == Reply::Type::kString) {
          handle_meta(ids[at + i], reply.elements[i].text, true, notices);
        }
      }
    }
  }

  /// For a batch with a value too large to read whole: each key alone, the large ones by their
  /// first bytes (up to 64 KiB; Celery writes `status` first).
  void read_one_by_one(const std::vector<std::string>& ids, std::vector<Notice>& notices) {
    for (const auto& id : ids) {
      auto key = std::string(kChannelPrefix) + id;
      auto length = cmd->command({"STRLEN", key}, Clock::now() + options.command_timeout);
      if (length.type != Reply::Type::kInteger || length.integer == 0) continue;
      auto limit = std::min<std::size_t>(65536, options.max_reply_bytes / 2);
      bool whole = static_cast<std::size_t>(length.integer) <= limit;
      auto value = whole ? cmd->command({"GET", key}, Clock::now() + options.command_timeout)
                         : cmd->command({"GETRANGE", key, "0", std::to_string(limit - 1)},
                                        Clock::now() + options.command_timeout);
      if (value.type == Reply::Type::kString) handle_meta(id, value.text, true, notices, !whole);
    }
  }

  void handle_meta(const std::string& id, std::string_view payload, bool reconciled,
                   std::vector<Notice>& notices, bool prefix = false) {
    std::string error;
    auto meta = parse_task_meta(payload, error, prefix);
    if (!meta) {
      spdlog::warn("celery: the result of task {} cannot be read: {}", printable(id),
                   printable(error));
      return;
    }
    auto now = Clock::now();
    bool unsubscribe = false;
    {
      MutexLock lock(mutex);
      auto it = pending.find(id);
      if (it == pending.end()) return;
      auto& p = it->second;
      if (meta->state == TaskState::kRetry && (!reconciled || p.last.state != TaskState::kRetry)) {
        ++p.retries;
        ++counters.retries_seen;
        // The task will run again: its deadline starts again, a bounded number of times.
        if (p.sent && p.retries <= kMaxRetryExtensions) {
          p.deadline = std::max(p.deadline, now + p.result_timeout);
        }
      }
      p.last = *meta;
      if (is_ready(meta->state)) {
        TaskOutcome outcome;
        outcome.task_id = id;
        outcome.meta = *meta;
        outcome.retries = p.retries;
        outcome.sent = true;
        if (meta->state == TaskState::kSuccess) {
          outcome.status = TaskOutcome::Status::kSucceeded;
        } else {
          outcome.status = TaskOutcome::Status::kFailed;
          outcome.error = meta->exception_text();
        }
        count(outcome);
        if (reconciled) ++counters.reconciled;
        notices.push_back({std::move(p.done), std::move(outcome), {}, {}});
        unsubscribe = p.subscribed;
        erase(it);
      } else if (p.progress) {
        notices.push_back({{}, {}, p.progress, {id, meta->state, p.retries}});
      }
      if (unsubscribe) to_unsubscribe.push_back(id);
    }
  }

  void expire(std::vector<Notice>& notices) {
    auto now = Clock::now();
    MutexLock lock(mutex);
    for (auto it = pending.begin(); it != pending.end();) {
      auto& p = it->second;
      if (!p.sent || now < p.deadline) {
        ++it;
        continue;
      }
      TaskOutcome outcome;
      outcome.status = TaskOutcome::Status::kTimedOut;
      outcome.task_id = it->first;
      outcome.meta = p.last;
      outcome.retries = p.retries;
      outcome.sent = true;
      outcome.error = "no outcome from Celery within " + duration_text(p.result_timeout) +
                      " (task " + it->first + ", last state " +
                      std::string(to_string(p.last.state)) +
                      (p.retries > 0 ? ", " + std::to_string(p.retries) + " retries" : "") + ")";
      count(outcome);
      notices.push_back({std::move(p.done), std::move(outcome), {}, {}});
      if (p.subscribed) to_unsubscribe.push_back(it->first);
      it = erase(it);
    }
  }

  void shut_down() {
    std::vector<Notice> notices;
    {
      MutexLock lock(mutex);
      for (auto& [id, p] : pending) {
        auto outcome = ended(id, TaskOutcome::Status::kClosed,
                             "the Celery client closed before task " + id + " ended");
        outcome.sent = p.sent;
        outcome.meta = p.last;
        outcome.retries = p.retries;
        notices.push_back({std::move(p.done), std::move(outcome), {}, {}});
      }
      wake_all_subscribers();
      pending.clear();
    }
    sub.reset();
    cmd.reset();
    deliver(notices);
  }

  void close() {
    {
      MutexLock lock(mutex);
      closing = true;
      wake_all_subscribers();
    }
    wake.signal();
    MutexLock lock(join_mutex);
    if (thread.joinable() && thread.get_id() != std::this_thread::get_id()) thread.join();
  }
};

Client::Client(ClientOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

Client::~Client() { close(); }

std::string Client::verify() {
  std::string unreachable;
  auto check = [&](const RedisUrl& url, const char* role) {
    try {
      RedisConnection::connect(url, Clock::now() + impl_->options.connect_timeout);
    } catch (const RedisAuthError& e) {
      throw RedisAuthError(std::string(role) + ": " + e.what());
    } catch (const RedisError& e) {
      if (!e.is_transient()) throw RedisError(std::string(role) + ": " + e.what(), false);
      if (!unreachable.empty()) unreachable += "; ";
      unreachable += std::string(role) + ": " + e.what();
    }
  };
  check(impl_->options.broker, "broker");
  check(impl_->options.result_backend, "result backend");
  return unreachable;
}

std::string Client::submit(const TaskMessage& message, milliseconds result_timeout,
                           OutcomeCallback done, ProgressCallback progress) {
  return impl_->submit(message, result_timeout, std::move(done), std::move(progress));
}

TaskOutcome Client::call(const TaskMessage& message, milliseconds result_timeout,
                         ProgressCallback progress) {
  struct Waiter {
    Mutex mutex;
    CondVar done_changed;
    std::optional<TaskOutcome> outcome GUARDED_BY(mutex);
  };
  auto waiter = std::make_shared<Waiter>();
  auto id = submit(
      message, result_timeout,
      [waiter](const TaskOutcome& outcome) {
        MutexLock lock(waiter->mutex);
        waiter->outcome = outcome;
        waiter->done_changed.notify_all();
      },
      std::move(progress));
  // The client ends every task by its deadline (or close()); this deadline is a backstop above it.
  auto backstop = Clock::now() + impl_->options.connect_timeout + impl_->options.command_timeout +
                  result_timeout * (kMaxRetryExtensions + 2);
  MutexLock lock(waiter->mutex);
  while (!waiter->outcome) {
    if (waiter->done_changed.wait_until(lock, backstop) == std::cv_status::timeout &&
        Clock::now() >= backstop) {
      return Impl::ended(id, TaskOutcome::Status::kTimedOut,
                         "no outcome from the Celery client in time");
    }
  }
  return *waiter->outcome;
}

void Client::watch(const std::string& task_id, milliseconds result_timeout, OutcomeCallback done,
                   ProgressCallback progress) {
  impl_->watch(task_id, result_timeout, std::move(done), std::move(progress));
}

void Client::close() { impl_->close(); }

ClientStats Client::stats() const {
  MutexLock lock(impl_->mutex);
  auto out = impl_->counters;
  out.in_flight = impl_->pending.size();
  out.connected = impl_->link == Impl::Link::kUp;
  return out;
}

}  // namespace metro::celery
