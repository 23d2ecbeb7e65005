// The service: listeners, the ledger-first deferral, handler runs with retries, batched
// settlement, start-up reconciliation, the reaper and the graceful stop.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <metro/dispatch/retry.hpp>
#include <metro/dispatch/service.hpp>
#include <metro/dispatch/worker_pool.hpp>
#include <metro/routing/router.hpp>

namespace metro::dispatch {

using ledger::MessageKey;
using ledger::State;
using SysClock = std::chrono::system_clock;
using std::chrono::milliseconds;

namespace {

constexpr std::size_t kMaxReceive = 100;  // Messages taken from one subscription at once (default).
constexpr std::size_t kSettleChunk = 100;        // Sequence numbers in one settlement request.
constexpr std::size_t kPeekPage = 250;           // Messages per peek while scanning.
constexpr std::size_t kDescriptionLimit = 1024;  // Dead-letter descriptions are short.
constexpr milliseconds kReceiveWait{500};
constexpr milliseconds kDeferringAge{std::chrono::minutes(1)};  // Older `deferring` rows: resolve.
constexpr milliseconds kLockRenewal{std::chrono::minutes(5)};

/// `topic/subscription#seq [correlation-id]`, how log lines name a message.
std::string name_of(const MessageKey& key, const std::string& correlation = {}) {
  auto name = key.topic + "/" + key.subscription + "#" + std::to_string(key.sequence_number);
  return correlation.empty() ? name : name + " [" + correlation + "]";
}

/// At most `limit` bytes, not cutting a UTF-8 sequence in two.
std::string clip(std::string text, std::size_t limit) {
  if (text.size() <= limit) return text;
  while (limit > 0 && (static_cast<unsigned char>(text[limit]) & 0xC0) == 0x80) --limit;
  text.resize(limit);
  return text;
}

/// The message's correlation id, else the `id` of its JSON body, else empty.
std::string correlation_of(const sb::ReceivedMessage& m, const nlohmann::json* body) {
  if (m.correlation_id && !m.correlation_id->empty()) return *m.correlation_id;
  if (body != nullptr && body->is_object()) {
    auto it = body->find("id");
    if (it != body->end()) return it->is_string() ? it->get<std::string>() : it->dump();
  }
  return {};
}

class FunctionHandler : public Handler {
 public:
  explicit FunctionHandler(Function function) : function_(std::move(function)) {}

  Result run(const Task& task, milliseconds timeout) override {
    auto start = std::chrono::steady_clock::now();
    Result result{Outcome::kSuccess, {}, {}};
    try {
      function_(task);
    } catch (const RetryLater& e) {
      result = {Outcome::kRetry, e.what(), {}};
    } catch (const std::exception& e) {
      result = {Outcome::kFailure, e.what(), {}};
    } catch (...) {
      result = {Outcome::kFailure, "the handler threw something that is not a std::exception", {}};
    }
    result.duration =
        std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start);
    if (result.outcome == Outcome::kSuccess && result.duration > timeout) {
      result = {Outcome::kFailure,
                "ran " + std::to_string(result.duration.count()) + " ms, past its timeout of " +
                    std::to_string(timeout.count()) + " ms",
                result.duration};
    }
    return result;
  }

 private:
  Function function_;
};

}  // namespace

std::unique_ptr<Handler> make_function_handler(Function function) {
  return std::make_unique<FunctionHandler>(std::move(function));
}

/// One subscription of the config with everything it needs.
struct Route {
  config::SubscriptionOptions options;
  routing::Router router;
  std::vector<std::unique_ptr<Handler>> handlers;  // Same order as options.handlers.
  std::shared_ptr<sb::Client> client;
  std::optional<sb::Receiver> receiver;
  // Listening state, under Impl::mutex: `busy` from arming a receive until its batch is handled
  // (or the receive is cancelled); `waiting_for_room` while parked until workers free up.
  bool busy = false;
  bool waiting_for_room = false;
  mutable std::mutex status_mutex;
  SubscriptionStatus status;
  std::vector<HandlerStats> stats;   // Same order as options.handlers; under status_mutex.
  std::optional<sb::Sender> sender;  // For publishing to the topic; under status_mutex.

  void record_duration(std::size_t index, milliseconds duration) {
    double seconds = static_cast<double>(duration.count()) / 1000.0;
    auto bucket = static_cast<std::size_t>(
        std::lower_bound(HandlerStats::kBounds.begin(), HandlerStats::kBounds.end(), seconds) -
        HandlerStats::kBounds.begin());
    std::lock_guard lock(status_mutex);
    auto& h = stats[index];
    ++h.buckets[bucket];
    ++h.count;
    h.sum_seconds += seconds;
  }

  std::optional<std::size_t> handler_index(const std::string& name) const {
    for (std::size_t i = 0; i < options.handlers.size(); ++i) {
      if (options.handlers[i].name == name) return i;
    }
    return std::nullopt;
  }
  bool explicit_completion(const std::vector<std::size_t>& indices) const {
    return std::any_of(indices.begin(), indices.end(), [&](std::size_t i) {
      return options.handlers[i].completion == config::Completion::kExplicit;
    });
  }
};

namespace {

enum class Progress { kPending, kSucceeded, kParked, kDeadLetter };

/// A deferred message with handlers still to run in this process.
struct Active {
  Route* route = nullptr;
  Task base;  // Without handler and attempt.
  std::vector<std::size_t> handlers;
  std::map<std::size_t, Progress> progress;
  std::map<std::size_t, int> budget_base;  // Attempts not counted against this dispatch's budget.
  std::string last_error;
  bool completed_explicitly = false;
};

/// A settlement waiting for the settler thread.
struct Settle {
  Route* route = nullptr;
  MessageKey key;
  sb::Disposition disposition = sb::Disposition::kComplete;
  std::string reason;
  std::string description;
  std::string correlation;
  std::shared_ptr<std::promise<void>> done;
  int attempts = 0;  // Failed tries so far.
  std::chrono::steady_clock::time_point not_before{};
};

// A settlement that failed for a passing reason is tried again, 1 s, 2 s, 4 s … 15 s apart: for
// over two minutes, longer than a lock lasts (a lock held by a dead receiver must expire first).
constexpr int kSettleAttempts = 12;
std::chrono::milliseconds settle_backoff(int attempts) {
  return std::chrono::seconds(std::min(15, 1 << std::min(attempts - 1, 4)));
}

struct AtomicCounters {
  std::atomic<std::uint64_t> received{0}, routed{0}, deferred{0}, completed{0}, dead_lettered{0},
      failed{0}, retries{0}, no_match{0}, malformed{0};
};

std::mutex registry_mutex;
std::vector<Service::Impl*> registry;  // Running services, for complete_deferred_message.

}  // namespace

struct Service::Impl {
  config::Config config;
  ServiceOptions options;
  std::shared_ptr<ledger::Ledger> ledger;
  std::shared_ptr<TaskQueue> queue;
  std::vector<std::unique_ptr<Route>> routes;
  std::size_t max_in_flight = 0;
  AtomicCounters counters;

  mutable std::mutex mutex;  // active, rng, stopping transitions
  std::condition_variable changed;
  std::map<MessageKey, Active> active;
  std::mt19937_64 rng{std::random_device{}()};
  std::atomic<bool> stopping{false};
  bool stopped = false;

  std::mutex settle_mutex;
  std::condition_variable settle_wake;
  std::deque<Settle> settles;
  bool settler_stopping = false;
  bool settler_gone = false;
  std::thread settler;
  std::thread reaper;
  std::unique_ptr<WorkerPool> listener_pool;

  // ---- set-up ------------------------------------------------------------------------------

  Impl(config::Config c, ServiceOptions o) : config(std::move(c)), options(std::move(o)) {
    std::vector<std::string> missing;
    for (const auto& sub : config.subscriptions) {
      auto route = std::make_unique<Route>();
      route->options = sub;
      route->status.topic = sub.topic_name;
      route->status.subscription = sub.subscription_name;
      for (const auto& h : sub.handlers) {
        route->stats.push_back({sub.topic_name, sub.subscription_name, h.name, {}, 0, 0});
        route->router.add(routing::SubjectMatcher(h.match, h.subject));
        switch (h.kind) {
          case config::HandlerKind::kExec:
            route->handlers.push_back(make_exec_handler(h.exec));
            break;
          case config::HandlerKind::kHttp:
            route->handlers.push_back(make_http_handler(h.http));
            break;
          case config::HandlerKind::kPython:
          case config::HandlerKind::kCelery:
            throw InvalidArgument(
                "subscription " + sub.topic_name + "/" + sub.subscription_name + ": handler '" +
                h.name + "' is a " + std::string(config::to_string(h.kind)) +
                " handler; metro run does not send Celery tasks yet (metro check accepts the "
                "config; run these handlers as exec or http handlers for now)");
          case config::HandlerKind::kFunction:
            if (auto it = options.functions.find(h.function); it != options.functions.end()) {
              route->handlers.push_back(make_function_handler(it->second));
            } else {
              missing.push_back(h.function);
              route->handlers.push_back(nullptr);
            }
            break;
        }
      }
      routes.push_back(std::move(route));
    }
    if (!missing.empty()) {
      std::string names;
      for (const auto& m : missing) names += (names.empty() ? "'" : ", '") + m + "'";
      std::string known;
      for (const auto& [name, f] : options.functions) known += (known.empty() ? "" : ", ") + name;
      throw InvalidArgument("the config names C++ handlers that this program does not register: " +
                            names + " (registered: " + (known.empty() ? "none" : known) +
                            "); register them with metro::App::handle or use exec/http handlers");
    }
    ledger = options.ledger
                 ? options.ledger
                 : std::shared_ptr<ledger::Ledger>(ledger::open_ledger(config.metro.ledger));
    queue = options.queue ? options.queue
                          : std::shared_ptr<TaskQueue>(make_in_process_queue(
                                static_cast<std::size_t>(std::max(1, config.metro.workers))));
    // Deferred messages waiting for a worker hold no lock, so a small queue ahead of the workers
    // costs nothing and keeps them busy; more would only take messages from other instances.
    max_in_flight = 4 * queue->workers();
  }

  Route* route_for(const std::string& topic, const std::string& subscription) const {
    for (const auto& r : routes) {
      if (r->options.topic_name == topic && r->options.subscription_name == subscription) {
        return r.get();
      }
    }
    return nullptr;
  }

  Route& route_or_throw(const MessageKey& key) const {
    auto* route = route_for(key.topic, key.subscription);
    if (route == nullptr) {
      throw UnknownMessageError("this metro does not consume " + key.topic + "/" +
                                key.subscription);
    }
    return *route;
  }

  void start() {
    std::map<std::string, std::shared_ptr<sb::Client>> clients;  // One connection per string.
    for (auto& route : routes) {
      auto& client = clients[route->options.connection_string];
      if (!client) {
        auto client_options = options.client;
        std::vector<Route*> sharing;
        for (auto& r : routes) {
          if (r->options.connection_string == route->options.connection_string) {
            sharing.push_back(r.get());
          }
        }
        client_options.on_state_change = [sharing](sb::ConnectionState state,
                                                   const std::string& why) {
          for (auto* r : sharing) {
            std::lock_guard lock(r->status_mutex);
            r->status.state = state;
            r->status.state_reason = why;
          }
        };
        client = std::make_shared<sb::Client>(route->options.connection_string, client_options);
      }
      route->client = client;
      sb::ReceiverOptions receiver_options;
      receiver_options.mode = sb::ReceiveMode::kPeekLock;
      receiver_options.prefetch = 0;  // Credit only for what the listener asks: no hidden backlog.
      receiver_options.auto_renew_lock_for = kLockRenewal;
      try {
        route->receiver = client->create_receiver(route->options.entity_path(), receiver_options);
      } catch (const Error& e) {
        // Say why the connection is not there, not only that the attach timed out.
        std::string why;
        {
          std::lock_guard lock(route->status_mutex);
          if (route->status.state != sb::ConnectionState::kConnected)
            why = route->status.state_reason;
        }
        throw Error("cannot consume " + route->options.entity_path() + " at " +
                        route->options.connection.host + ": " + e.what() +
                        (why.empty() ? "" : "; the connection: " + why),
                    e.is_transient());
      }
      std::lock_guard lock(route->status_mutex);
      route->status.state = client->state();
    }
    queue->start([this](const Task& task) { run_task(task); });
    settler = std::thread([this] { settle_loop(); });
    for (auto& route : routes) reconcile(*route);
    listener_pool = std::make_unique<WorkerPool>(std::clamp<std::size_t>(routes.size(), 1, 4));
    for (auto& route : routes) arm(*route);
    reaper = std::thread([this] { reap_loop(); });
    {
      std::lock_guard lock(registry_mutex);
      registry.push_back(this);
    }
    spdlog::info("metro is consuming {} subscription(s) with {} workers", routes.size(),
                 queue->workers());
  }

  // ---- listening ---------------------------------------------------------------------------

  // No thread waits on a subscription: `arm` asks its receiver for as many messages as there is
  // room for, with a callback; the client hands them over on its thread, and a small pool of
  // listener threads (at most 4, shared by all subscriptions) records, defers and dispatches
  // them, then arms the receiver again.

  void arm(Route& route) {
    std::size_t want;
    {
      std::lock_guard lock(mutex);
      route.busy = !stopping && active.size() < max_in_flight;
      route.waiting_for_room = !stopping && !route.busy;
      if (!route.busy) {
        changed.notify_all();
        return;
      }
      want = std::min(max_in_flight - active.size(), receive_limit(route));
    }
    route.receiver->receive_async(want, kReceiveWait,
                                  [this, r = &route](std::vector<sb::ReceivedMessage> messages) {
                                    received(*r, std::move(messages));
                                  });
  }

  static std::size_t receive_limit(const Route& route) {
    return route.options.prefetch > 0 ? static_cast<std::size_t>(route.options.prefetch)
                                      : kMaxReceive;
  }

  /// On the client's thread: hand the batch to a listener thread.
  void received(Route& route, std::vector<sb::ReceivedMessage> messages) {
    auto batch = std::make_shared<std::vector<sb::ReceivedMessage>>(std::move(messages));
    bool queued = listener_pool->submit([this, r = &route, batch] { listen_once(*r, *batch); });
    if (!queued) {
      for (auto& m : *batch) give_back(*route.receiver, m);
      idle(route);
    }
  }

  void listen_once(Route& route, std::vector<sb::ReceivedMessage>& messages) {
    if (stopping) {
      for (auto& m : messages) give_back(*route.receiver, m);
      idle(route);
      return;
    }
    if (!messages.empty()) {
      {
        std::lock_guard lock(route.status_mutex);
        route.status.last_message = SysClock::now();
      }
      counters.received += messages.size();
      handle_batch(route, messages);
    }
    arm(route);
  }

  void idle(Route& route) {
    std::lock_guard lock(mutex);
    route.busy = false;
    changed.notify_all();
  }

  /// Workers freed up: arm the subscriptions that were waiting for room.
  void wake_waiting() {
    std::vector<Route*> waking;
    {
      std::lock_guard lock(mutex);
      if (stopping || active.size() >= max_in_flight) return;
      for (auto& r : routes) {
        if (r->waiting_for_room) {
          r->waiting_for_room = false;
          r->busy = true;
          waking.push_back(r.get());
        }
      }
    }
    for (auto* r : waking) {
      if (!listener_pool->submit([this, r] { arm(*r); })) idle(*r);
    }
  }

  /// Abandons a message without waiting (it may run on the client's own thread).
  static void give_back(sb::Receiver& receiver, const sb::ReceivedMessage& m) {
    try {
      (void)receiver.abandon_async(m);
    } catch (const Error&) {
      // Its lock lapses on its own and it is delivered again.
    }
  }

  /// Routes a batch: settles what has no handler or a bad body, records the rest in the ledger,
  /// defers it, and queues its handler runs.
  void handle_batch(Route& route, std::vector<sb::ReceivedMessage>& messages) {
    auto& receiver = *route.receiver;
    struct Work {
      sb::ReceivedMessage* message;
      std::vector<std::size_t> handlers;
      Task base;
    };
    std::vector<Work> work;
    std::vector<std::pair<std::string, std::future<void>>> settling;  // Named for the log.
    auto now = SysClock::now();
    for (auto& m : messages) {
      MessageKey key{route.options.topic_name, route.options.subscription_name, m.sequence_number};
      if (m.locked_until && *m.locked_until <= now) continue;  // Will be delivered again.
      nlohmann::json body = nlohmann::json::parse(m.body, nullptr, false);
      std::string correlation = correlation_of(m, body.is_discarded() ? nullptr : &body);
      auto settle = [&](const char* what, std::future<void> f) {
        spdlog::info("{}: {}", name_of(key, correlation), what);
        settling.emplace_back(name_of(key, correlation), std::move(f));
      };
      if (body.is_discarded()) {
        std::string problem;
        try {
          body = nlohmann::json::parse(m.body);
        } catch (const nlohmann::json::exception& e) {
          problem = e.what();
        }
        ++counters.malformed;
        problem = clip("the body is not JSON: " + problem, kDescriptionLimit);
        if (route.options.on_malformed_body == config::MalformedBodyPolicy::kDeadLetter) {
          spdlog::warn("{}: dead-lettered: {}", name_of(key, correlation), problem);
          settling.emplace_back(name_of(key, correlation),
                                receiver.dead_letter_async(m, "MalformedBody", problem));
        } else {
          settle(("completed without handling: " + problem).c_str(), receiver.complete_async(m));
        }
        continue;
      }
      auto lookup = routing::find_subject(route.options.subject_source, m.body, m.subject);
      std::vector<std::size_t> handlers;
      std::string why;
      if (lookup.status == routing::SubjectLookup::Status::kFound) {
        handlers = route.router.route(lookup.subject);
        if (handlers.empty()) why = "no handler matches the subject '" + lookup.subject + "'";
      } else {
        why = lookup.problem;
      }
      if (handlers.empty()) {
        ++counters.no_match;
        switch (route.options.on_no_match) {
          case config::NoMatchPolicy::kComplete:
            spdlog::debug("{}: completed: {}", name_of(key, correlation), why);
            settling.emplace_back(name_of(key, correlation), receiver.complete_async(m));
            break;
          case config::NoMatchPolicy::kDeadLetter:
            settle(("dead-lettered: " + why).c_str(),
                   receiver.dead_letter_async(m, "NoHandler", clip(why, kDescriptionLimit)));
            break;
          case config::NoMatchPolicy::kAbandon:
            settle(("abandoned: " + why).c_str(), receiver.abandon_async(m));
            break;
        }
        continue;
      }
      Task base;
      base.topic_name = key.topic;
      base.subscription_name = key.subscription;
      base.sequence_number = key.sequence_number;
      base.subject = lookup.subject;
      base.message_id = m.message_id.value_or("");
      base.correlation_id = correlation;
      base.body = m.body;
      work.push_back({&m, std::move(handlers), std::move(base)});
    }

    if (!work.empty()) defer_and_dispatch(route, work);

    for (auto& [name, f] : settling) {
      try {
        f.get();
      } catch (const Error& e) {
        spdlog::warn("{}: settling failed ({}); it will be delivered again", name, e.what());
      }
    }
  }

  template <class Work>
  void defer_and_dispatch(Route& route, std::vector<Work>& work) {
    auto& receiver = *route.receiver;
    std::vector<ledger::DeferredMessage> rows;
    for (auto& w : work) rows.push_back(row_of(w.base, State::kDeferring));
    try {
      ledger->record_all(rows);
    } catch (const Error& e) {
      // Without a record a deferral could be lost: give the messages back instead.
      spdlog::error("{}: the ledger cannot record {} message(s), giving them back: {}",
                    route.options.entity_path(), work.size(), e.what());
      for (auto& w : work) give_back(receiver, *w.message);
      std::unique_lock lock(mutex);
      changed.wait_for(lock, std::chrono::seconds(1), [&] { return stopping.load(); });
      return;
    }
    std::vector<std::future<void>> deferrals;
    for (auto& w : work) deferrals.push_back(receiver.defer_async(*w.message));
    std::vector<MessageKey> deferred;
    std::vector<Work*> dispatched;
    for (std::size_t i = 0; i < work.size(); ++i) {
      auto key = key_of(work[i].base);
      try {
        deferrals[i].get();
        deferred.push_back(key);
        dispatched.push_back(&work[i]);
      } catch (const sb::LockLostError& e) {
        spdlog::info("{}: lock lost before it was deferred; it will be delivered again",
                     name_of(key, work[i].base.correlation_id));
        forget(key);
      } catch (const Error& e) {
        // Whether the deferral happened is unknown: the row stays `deferring` and the reaper
        // resolves it by peeking.
        spdlog::warn("{}: deferring failed ({}); will be resolved by peeking",
                     name_of(key, work[i].base.correlation_id), e.what());
      }
    }
    if (deferred.empty()) return;
    counters.deferred += deferred.size();
    try {
      ledger->set_state_all(deferred, State::kDeferred);
    } catch (const Error& e) {
      spdlog::error("ledger: cannot mark {} message(s) deferred: {}", deferred.size(), e.what());
    }
    for (auto* w : dispatched) dispatch(route, w->base, w->handlers, {}, false);
  }

  void forget(const MessageKey& key) {
    try {
      ledger->forget(key);
    } catch (const Error& e) {
      spdlog::warn("ledger: cannot drop {}: {}", name_of(key), e.what());
    }
  }

  ledger::DeferredMessage row_of(const Task& base, State state) const {
    ledger::DeferredMessage row;
    row.key = key_of(base);
    row.subject = base.subject;
    row.message_id = base.message_id;
    row.correlation_id = base.correlation_id;
    row.body = base.body;
    if (row.body.size() > config.metro.ledger_body_limit) {
      row.body.resize(config.metro.ledger_body_limit);
      row.body_truncated = true;
    }
    row.state = state;
    return row;
  }

  static MessageKey key_of(const Task& task) {
    return {task.topic_name, task.subscription_name, task.sequence_number};
  }

  // ---- running handlers --------------------------------------------------------------------

  /// Queues a run of each of `handlers` for a deferred message. `attempts` gives the attempts
  /// already made per handler (numbering continues); `fresh_budget` does not count them against
  /// the retry policy. False when the message is already being handled.
  bool dispatch(Route& route, const Task& base, const std::vector<std::size_t>& handlers,
                const std::map<std::size_t, int>& attempts, bool fresh_budget) {
    auto key = key_of(base);
    std::vector<Task> tasks;
    {
      std::lock_guard lock(mutex);
      if (active.count(key) != 0) return false;
      Active a;
      a.route = &route;
      a.base = base;
      a.handlers = handlers;
      for (auto i : handlers) {
        int made = attempts.count(i) != 0 ? attempts.at(i) : 0;
        a.progress[i] = Progress::kPending;
        a.budget_base[i] = fresh_budget ? made : 0;
        Task t = base;
        t.handler = route.options.handlers[i].name;
        t.attempt = made + 1;
        tasks.push_back(std::move(t));
      }
      active.emplace(key, std::move(a));
    }
    counters.routed += tasks.size();
    for (auto& t : tasks) {
      if (!queue->push(t)) {
        // Shutting down: the message stays deferred and the next start picks it up.
        release(key);
        return true;
      }
    }
    return true;
  }

  void release(const MessageKey& key) {
    {
      std::lock_guard lock(mutex);
      active.erase(key);
    }
    changed.notify_all();
    wake_waiting();
  }

  void run_task(const Task& task) {
    auto key = key_of(task);
    Route* route = nullptr;
    std::size_t index = 0;
    {
      std::lock_guard lock(mutex);
      auto it = active.find(key);
      if (it == active.end()) return;  // Settled meanwhile.
      route = it->second.route;
      auto found = route->handler_index(task.handler);
      if (!found) return;
      index = *found;
    }
    const auto& handler = route->options.handlers[index];
    ledger::HandlerRun run;
    run.handler = task.handler;
    run.attempt = task.attempt;
    run.started = SysClock::now();
    try {
      ledger->begin_run(key, run);
    } catch (const Error& e) {
      spdlog::error("ledger: cannot record the start of {} on {}: {}", task.handler,
                    name_of(key, task.correlation_id), e.what());
    }
    spdlog::debug("{}: {} attempt {} started", name_of(key, task.correlation_id), task.handler,
                  task.attempt);
    Result result;
    try {
      result = route->handlers[index]->run(task, handler.timeout);
    } catch (const std::exception& e) {
      result = {Outcome::kFailure, e.what(), {}};
    }
    run.finished = SysClock::now();
    route->record_duration(index, result.duration);
    run.outcome = result.outcome == Outcome::kSuccess ? ledger::HandlerRun::Outcome::kSucceeded
                  : result.outcome == Outcome::kRetry ? ledger::HandlerRun::Outcome::kRetry
                                                      : ledger::HandlerRun::Outcome::kFailed;
    run.error = result.error;
    try {
      ledger->record_run(key, run);
    } catch (const Error& e) {
      spdlog::error("ledger: cannot record the end of {} on {}: {}", task.handler,
                    name_of(key, task.correlation_id), e.what());
    }
    if (result.outcome == Outcome::kSuccess) {
      spdlog::debug("{}: {} succeeded in {} ms", name_of(key, task.correlation_id), task.handler,
                    result.duration.count());
    } else {
      spdlog::warn("{}: {} attempt {} {}: {}", name_of(key, task.correlation_id), task.handler,
                   task.attempt, result.outcome == Outcome::kRetry ? "asked to retry" : "failed",
                   result.error);
    }
    finish_run(*route, index, task, result);
  }

  void finish_run(Route& route, std::size_t index, const Task& task, const Result& result) {
    auto key = key_of(task);
    const auto& handler = route.options.handlers[index];
    std::unique_lock lock(mutex);
    auto it = active.find(key);
    if (it == active.end()) return;
    auto& a = it->second;
    if (result.outcome == Outcome::kSuccess) {
      a.progress[index] = Progress::kSucceeded;
    } else {
      a.last_error = task.handler + ": " + result.error;
      int made = task.attempt - a.budget_base[index];
      double jitter = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
      auto delay = next_delay(handler.retry, made, jitter);
      if (delay && !stopping) {
        Task next = task;
        ++next.attempt;
        auto error = a.last_error;
        lock.unlock();
        ++counters.retries;
        try {
          ledger->set_state(key, State::kRetrying, error);
        } catch (const Error& e) {
          spdlog::error("ledger: {}: {}", name_of(key, task.correlation_id), e.what());
        }
        // A refused push means shutting down: the row stays `retrying` for the next start.
        if (!queue->push(next, TaskQueue::Clock::now() + *delay)) release(key);
        return;
      }
      a.progress[index] = handler.on_failure == config::FailurePolicy::kDeadLetter
                              ? Progress::kDeadLetter
                              : Progress::kParked;
    }
    bool pending = false, parked = false, dead_letter = false;
    for (auto& [i, p] : a.progress) {
      pending |= p == Progress::kPending;
      parked |= p == Progress::kParked;
      dead_letter |= p == Progress::kDeadLetter;
    }
    if (pending) return;
    // Every handler has finished: settle, park, or wait for an explicit completion.
    bool explicit_completion = route.explicit_completion(a.handlers);
    bool completed_explicitly = a.completed_explicitly;
    auto error = a.last_error;
    auto correlation = a.base.correlation_id;
    active.erase(it);
    lock.unlock();
    changed.notify_all();
    wake_waiting();
    try {
      if (dead_letter) {
        enqueue_settle(route, key, sb::Disposition::kDeadLetter, "HandlerFailed",
                       clip(error, kDescriptionLimit), correlation);
      } else if (parked) {
        ++counters.failed;
        spdlog::warn("{}: parked as failed (it stays deferred; retry it by sequence number): {}",
                     name_of(key, correlation), error);
        ledger->set_state(key, State::kFailed, error);
      } else if (!explicit_completion) {
        enqueue_settle(route, key, sb::Disposition::kComplete, {}, {}, correlation);
      } else if (!completed_explicitly) {
        // The handler completes it itself (perhaps asynchronously, still under way).
        auto row = ledger->find(key);
        if (row && row->state == State::kRunning) ledger->set_state(key, State::kDeferred);
      }
    } catch (const Error& e) {
      spdlog::error("ledger: {}: {}", name_of(key), e.what());
    }
  }

  // ---- settling ----------------------------------------------------------------------------

  std::future<void> enqueue_settle(Route& route, const MessageKey& key, sb::Disposition disposition,
                                   std::string reason, std::string description,
                                   std::string correlation = {}) {
    auto done = std::make_shared<std::promise<void>>();
    auto future = done->get_future();
    {
      std::lock_guard lock(settle_mutex);
      if (settler_gone) {
        done->set_exception(std::make_exception_ptr(
            ConflictError("metro is shutting down; the message stays deferred and is settled "
                          "after the next start")));
        return future;
      }
      settles.push_back({&route, key, disposition, std::move(reason), std::move(description),
                         std::move(correlation), done});
    }
    settle_wake.notify_one();
    return future;
  }

  void settle_loop() {
    std::unique_lock lock(settle_mutex);
    while (true) {
      if (settles.empty()) {
        if (settler_stopping) break;  // Everything is settled.
        settle_wake.wait(lock);
        continue;
      }
      // Retries wait for their time, except when stopping (then they get one last try).
      auto now = std::chrono::steady_clock::now();
      std::deque<Settle> due;
      std::deque<Settle> later;
      auto next = std::chrono::steady_clock::time_point::max();
      for (auto& item : settles) {
        if (settler_stopping || item.not_before <= now) {
          due.push_back(std::move(item));
        } else {
          next = std::min(next, item.not_before);
          later.push_back(std::move(item));
        }
      }
      settles = std::move(later);
      if (due.empty()) {
        settle_wake.wait_until(lock, next);
        continue;
      }
      lock.unlock();
      settle_batch(due);
      lock.lock();
    }
    settler_gone = true;
  }

  void settle_batch(std::deque<Settle>& batch) {
    // Completions per subscription in chunks (one receive-by-sequence-number and one
    // update-disposition per chunk); dead-letters one by one, as each has its own reason.
    std::map<Route*, std::vector<Settle*>> completions;
    for (auto& s : batch) {
      if (s.disposition == sb::Disposition::kComplete) {
        completions[s.route].push_back(&s);
      } else {
        settle_chunk(*s.route, {&s});
      }
    }
    for (auto& [route, items] : completions) {
      for (std::size_t i = 0; i < items.size(); i += kSettleChunk) {
        std::vector<Settle*> chunk(
            items.begin() + static_cast<std::ptrdiff_t>(i),
            items.begin() + static_cast<std::ptrdiff_t>(std::min(items.size(), i + kSettleChunk)));
        settle_chunk(*route, chunk);
      }
    }
  }

  void settle_chunk(Route& route, const std::vector<Settle*>& items) {
    auto& receiver = *route.receiver;
    const auto& first = *items.front();
    std::vector<std::int64_t> numbers;
    for (auto* s : items) {
      if (std::find(numbers.begin(), numbers.end(), s->key.sequence_number) == numbers.end()) {
        numbers.push_back(s->key.sequence_number);
      }
    }
    std::exception_ptr failure;
    bool gone = false;
    bool locked_elsewhere = false;
    try {
      auto messages = receiver.receive_deferred(numbers);
      receiver.settle_deferred(messages, first.disposition, first.reason, first.description);
    } catch (const sb::NotFoundError& e) {
      if (numbers.size() > 1) {
        for (auto* s : items) settle_chunk(route, {s});  // Find the one that is not there.
        return;
      }
      gone = true;
    } catch (const Error& e) {
      failure = std::current_exception();
    }
    if (gone && still_deferred(route, numbers.front())) {
      // Fetched by sequence number by someone else, e.g. a metro that died before settling it:
      // its lock has to expire first.
      locked_elsewhere = true;
      failure = std::make_exception_ptr(
          ConflictError(name_of(first.key, first.correlation) +
                        " is locked by another receiver right now; try again later"));
    }
    if (failure) {
      bool again = locked_elsewhere;
      try {
        std::rethrow_exception(failure);
      } catch (const sb::LockLostError& e) {
        again = true;  // Fetching it by sequence number again gives a fresh lock.
      } catch (const Error& e) {
        again = again || e.is_transient();
      }
      std::lock_guard lock(settle_mutex);
      for (auto* s : items) {
        if (again && s->attempts + 1 < kSettleAttempts && !settler_stopping) {
          Settle retry = *s;
          ++retry.attempts;
          retry.not_before = std::chrono::steady_clock::now() + settle_backoff(retry.attempts);
          settles.push_back(std::move(retry));
        } else {
          log_settle_failure(*s, failure);
          s->done->set_exception(failure);
        }
      }
      return;
    }
    std::vector<MessageKey> keys;
    for (auto* s : items) keys.push_back(s->key);
    auto state =
        first.disposition == sb::Disposition::kComplete ? State::kCompleted : State::kDeadLettered;
    if (state == State::kCompleted) {
      counters.completed += gone ? 0 : numbers.size();
    } else {
      counters.dead_lettered += gone ? 0 : numbers.size();
      spdlog::warn("{}: dead-lettered ({}): {}", name_of(first.key, first.correlation),
                   first.reason, first.description);
    }
    try {
      ledger->set_state_all(keys, state,
                            gone ? "was no longer in the subscription (settled before)" : "");
    } catch (const Error& e) {
      spdlog::error("ledger: cannot record {} settled message(s): {}", keys.size(), e.what());
    }
    for (auto* s : items) s->done->set_value();
  }

  static void log_settle_failure(const Settle& s, const std::exception_ptr& failure) {
    try {
      std::rethrow_exception(failure);
    } catch (const std::exception& e) {
      spdlog::warn(
          "{}: settling failed, it stays deferred (the reaper tries again after "
          "deferred_deadline, or retry it): {}",
          name_of(s.key, s.correlation), e.what());
    }
  }

  /// Whether a message is still in the subscription as deferred (peeking does not lock).
  bool still_deferred(Route& route, std::int64_t sequence_number) {
    try {
      auto peeked = route.receiver->peek(sequence_number, 1);
      return !peeked.empty() && peeked.front().sequence_number == sequence_number;
    } catch (const Error&) {
      return false;
    }
  }

  // ---- reconciliation and the reaper -------------------------------------------------------

  /// Rows of one subscription in `state`, updated before `before` (all pages).
  std::vector<ledger::DeferredMessage> rows(Route& route, State state,
                                            std::optional<SysClock::time_point> before = {}) {
    ledger::Query q;
    q.topic = route.options.topic_name;
    q.subscription = route.options.subscription_name;
    q.state = state;
    q.updated_before = before;
    q.limit = 500;
    std::vector<ledger::DeferredMessage> out;
    while (true) {
      auto page = ledger->list(q);
      for (auto& m : page.items) out.push_back(std::move(m));
      if (!page.next) break;
      q.after = page.next;
    }
    return out;
  }

  /// At start-up: settle what the last run left half-done, then resume every unfinished message.
  void reconcile(Route& route) {
    std::size_t resolved = 0, resumed = 0;
    for (auto& row : rows(route, State::kDeferring)) {
      resolved += resolve_deferring(route, row) ? 1 : 0;
    }
    for (auto state : {State::kDeferred, State::kRunning, State::kRetrying}) {
      for (auto& row : rows(route, state)) resumed += resume(route, row, false) ? 1 : 0;
    }
    if (resolved + resumed > 0) {
      spdlog::info("{}: resolved {} interrupted deferral(s), resumed {} message(s)",
                   route.options.entity_path(), resolved, resumed);
    }
  }

  /// A row recorded before a deferral whose outcome is unknown: peek to see what happened.
  bool resolve_deferring(Route& route, ledger::DeferredMessage& row) {
    std::vector<sb::ReceivedMessage> peeked;
    try {
      peeked = route.receiver->peek(row.key.sequence_number, 1);
    } catch (const Error& e) {
      spdlog::warn("{}: cannot peek to resolve it yet: {}", name_of(row.key), e.what());
      return false;
    }
    if (peeked.empty() || peeked.front().sequence_number != row.key.sequence_number) {
      ledger->set_state(row.key, State::kCompleted,
                        "was no longer in the subscription when its deferral was resolved");
      return true;
    }
    if (peeked.front().state != sb::MessageState::kDeferred) {
      forget(row.key);  // Never deferred: it is delivered again and recorded then.
      return true;
    }
    ledger->set_state(row.key, State::kDeferred);
    row.state = State::kDeferred;
    resume(route, row, false);
    return true;
  }

  /// Runs the handlers of a ledger row that have not succeeded. False when nothing was started.
  bool resume(Route& route, const ledger::DeferredMessage& row, bool fresh_budget) {
    {
      std::lock_guard lock(mutex);
      if (active.count(row.key) != 0) return false;
    }
    auto handlers = route.router.route(row.subject);
    if (handlers.empty()) {
      ledger->set_state(
          row.key, row.state,
          "no handler of the current config matches the subject '" + row.subject + "'");
      return false;
    }
    std::map<std::size_t, int> attempts;
    std::set<std::size_t> succeeded;
    for (const auto& run : ledger->runs(row.key)) {
      auto i = route.handler_index(run.handler);
      if (!i) continue;
      attempts[*i] = std::max(attempts[*i], run.attempt);
      if (run.outcome == ledger::HandlerRun::Outcome::kSucceeded) succeeded.insert(*i);
    }
    std::vector<std::size_t> to_run;
    for (auto i : handlers) {
      if (succeeded.count(i) == 0) to_run.push_back(i);
    }
    if (to_run.empty()) {
      if (!route.explicit_completion(handlers)) {
        enqueue_settle(route, row.key, sb::Disposition::kComplete, {}, {});
        return true;
      }
      if (!fresh_budget) {
        spdlog::warn("{}: its handlers succeeded but did not complete it; complete or retry it",
                     name_of(row.key));
        ledger->set_state(row.key, State::kDeferred,
                          "the handlers succeeded but did not complete the message");
        return false;
      }
      to_run = handlers;  // An explicit retry runs them all again.
    }
    Task base;
    base.topic_name = row.key.topic;
    base.subscription_name = row.key.subscription;
    base.sequence_number = row.key.sequence_number;
    base.subject = row.subject;
    base.message_id = row.message_id;
    base.correlation_id = row.correlation_id;
    base.body = row.body;
    if (row.body_truncated) {
      auto peeked = route.receiver->peek(row.key.sequence_number, 1);
      if (peeked.empty() || peeked.front().sequence_number != row.key.sequence_number) {
        ledger->set_state(row.key, State::kCompleted,
                          "was no longer in the subscription when metro resumed it");
        return false;
      }
      base.body = peeked.front().body;
    }
    return dispatch(route, base, to_run, attempts, fresh_budget);
  }

  /// Deferred messages in the subscription that the ledger does not know: record as orphaned.
  void adopt_orphans(Route& route) {
    std::size_t adopted = 0;
    std::int64_t from = 1;
    while (!stopping) {
      std::vector<sb::ReceivedMessage> page;
      try {
        page = route.receiver->peek(from, kPeekPage);
      } catch (const Error& e) {
        spdlog::warn("{}: the orphan scan stopped: {}", route.options.entity_path(), e.what());
        return;
      }
      if (page.empty()) break;
      std::vector<ledger::DeferredMessage> orphans;
      for (auto& m : page) {
        from = std::max(from, m.sequence_number + 1);
        if (m.state != sb::MessageState::kDeferred) continue;
        MessageKey key{route.options.topic_name, route.options.subscription_name,
                       m.sequence_number};
        if (ledger->find(key)) continue;
        nlohmann::json body = nlohmann::json::parse(m.body, nullptr, false);
        Task base;
        base.topic_name = key.topic;
        base.subscription_name = key.subscription;
        base.sequence_number = key.sequence_number;
        auto lookup = routing::find_subject(route.options.subject_source, m.body, m.subject);
        base.subject = lookup.subject;
        base.message_id = m.message_id.value_or("");
        base.correlation_id = correlation_of(m, body.is_discarded() ? nullptr : &body);
        base.body = m.body;
        auto row = row_of(base, State::kOrphaned);
        row.last_error = "found deferred in the subscription with no ledger record";
        orphans.push_back(std::move(row));
      }
      if (!orphans.empty()) {
        ledger->record_all(orphans);
        adopted += orphans.size();
      }
    }
    if (adopted > 0) {
      spdlog::warn(
          "{}: adopted {} deferred message(s) no ledger row knew, as orphaned; list them "
          "and retry or complete them",
          route.options.entity_path(), adopted);
    }
  }

  void reap_loop() {
    for (auto& route : routes) {
      try {
        adopt_orphans(*route);
      } catch (const Error& e) {
        spdlog::error("{}: orphan scan: {}", route->options.entity_path(), e.what());
      }
    }
    auto deadline = config.metro.deferred_deadline;
    auto interval =
        options.reaper_interval.count() > 0
            ? options.reaper_interval
            : std::clamp<milliseconds>(deadline / 4, milliseconds(1000), std::chrono::minutes(1));
    spdlog::debug("the reaper looks for stale deferrals every {} ms", interval.count());
    std::unique_lock lock(mutex);
    while (!changed.wait_for(lock, interval, [&] { return stopping.load(); })) {
      lock.unlock();
      for (auto& route : routes) {
        try {
          reap(*route, deadline);
        } catch (const Error& e) {
          spdlog::error("{}: reaper: {}", route->options.entity_path(), e.what());
        }
      }
      prune();
      lock.lock();
    }
  }

  /// Deletes settled rows past `ledger_retention`.
  void prune() {
    auto retention = config.metro.ledger_retention;
    if (retention.count() <= 0) return;
    try {
      if (auto n = ledger->prune(SysClock::now() - retention); n > 0) {
        spdlog::info("ledger: deleted {} settled message(s) older than ledger_retention", n);
      }
    } catch (const Error& e) {
      spdlog::error("ledger: pruning: {}", e.what());
    }
  }

  void reap(Route& route, milliseconds deadline) {
    auto now = SysClock::now();
    for (auto& row : rows(route, State::kDeferring, now - kDeferringAge)) {
      resolve_deferring(route, row);
    }
    for (auto state : {State::kDeferred, State::kRunning, State::kRetrying}) {
      for (auto& row : rows(route, state, now - deadline)) {
        spdlog::debug("{}: {} since before the deadline", name_of(row.key), to_string(state));
        bool busy;
        {
          std::lock_guard lock(mutex);
          busy = active.count(row.key) != 0;
        }
        if (busy) {
          spdlog::warn("{}: still being handled after deferred_deadline ({} s)", name_of(row.key),
                       std::chrono::duration_cast<std::chrono::seconds>(deadline).count());
          continue;
        }
        if (resume(route, row, false)) {
          spdlog::warn("{}: stale deferral (past deferred_deadline), handlers dispatched again",
                       name_of(row.key));
        }
      }
    }
  }

  // ---- operations --------------------------------------------------------------------------

  ledger::DeferredMessage row_or_throw(const MessageKey& key) {
    auto row = ledger->find(key);
    if (!row) {
      throw UnknownMessageError("no deferred message " + name_of(key) + " is known");
    }
    if (row->state == State::kCompleted || row->state == State::kDeadLettered) {
      throw ConflictError(name_of(key) + " is already " + std::string(to_string(row->state)));
    }
    std::lock_guard lock(mutex);
    if (active.count(key) != 0) {
      throw ConflictError(name_of(key) + " is being handled right now");
    }
    return *row;
  }

  std::future<void> complete(const MessageKey& key) {
    auto& route = route_or_throw(key);
    {
      std::lock_guard lock(mutex);
      if (auto it = active.find(key); it != active.end()) it->second.completed_explicitly = true;
    }
    if (auto row = ledger->find(key); row && row->state == State::kCompleted) {
      std::promise<void> done;
      done.set_value();
      return done.get_future();
    }
    return enqueue_settle(route, key, sb::Disposition::kComplete, {}, {});
  }

  void retry(const MessageKey& key) {
    auto& route = route_or_throw(key);
    auto row = row_or_throw(key);
    if (stopping) throw ConflictError("metro is shutting down");
    if (!resume(route, row, true)) {
      throw ConflictError("no handler of the current config matches " + name_of(key) +
                          "'s subject '" + row.subject + "'");
    }
    spdlog::info("{}: retried by request", name_of(key));
  }

  void dead_letter(const MessageKey& key, const std::string& reason,
                   const std::string& description) {
    auto& route = route_or_throw(key);
    row_or_throw(key);
    enqueue_settle(route, key, sb::Disposition::kDeadLetter, reason, description).get();
  }

  // ---- stopping ----------------------------------------------------------------------------

  bool stop(milliseconds grace) {
    {
      std::lock_guard lock(mutex);
      if (stopped) return true;
      stopped = true;
      stopping = true;
    }
    changed.notify_all();
    {
      std::lock_guard lock(registry_mutex);
      std::erase(registry, this);
    }
    for (auto& route : routes) {
      if (route->receiver && route->receiver->cancel_receive_async()) idle(*route);
    }
    {
      std::unique_lock lock(mutex);
      changed.wait(lock, [&] {
        return std::none_of(routes.begin(), routes.end(), [](auto& r) { return r->busy; });
      });
    }
    if (listener_pool) listener_pool->shutdown(milliseconds::max());
    std::vector<Task> dropped;
    bool finished = queue->shutdown(grace, &dropped);
    if (!dropped.empty()) {
      spdlog::info("{} handler run(s) not started; their messages stay deferred for the next start",
                   dropped.size());
    }
    if (!finished) {
      spdlog::warn(
          "handlers still running after the {} ms grace period; their messages stay "
          "deferred and run again at the next start",
          grace.count());
    }
    {
      std::lock_guard lock(settle_mutex);
      settler_stopping = true;
    }
    settle_wake.notify_all();
    if (settler.joinable()) settler.join();
    if (reaper.joinable()) reaper.join();
    for (auto& route : routes) {
      if (route->client) route->client->close();
    }
    return finished;
  }
};

// ---- Service -------------------------------------------------------------------------------

Service::Service(config::Config config, ServiceOptions options)
    : impl_(std::make_shared<Impl>(std::move(config), std::move(options))) {}

Service::~Service() { impl_->stop(milliseconds(0)); }

void Service::start() { impl_->start(); }
bool Service::stop(milliseconds grace) { return impl_->stop(grace); }
std::future<void> Service::complete(const MessageKey& key) { return impl_->complete(key); }
void Service::retry(const MessageKey& key) { impl_->retry(key); }
void Service::dead_letter(const MessageKey& key, const std::string& reason,
                          const std::string& description) {
  impl_->dead_letter(key, reason, description);
}
void Service::publish(const std::string& topic, const sb::Message& message) {
  Route* route = nullptr;
  for (auto& r : impl_->routes) {
    if (r->options.topic_name == topic && r->client) route = r.get();
  }
  if (route == nullptr) {
    throw UnknownMessageError("no subscription of this metro is on the topic '" + topic + "'");
  }
  std::optional<sb::Sender> sender;
  {
    std::lock_guard lock(route->status_mutex);
    sender = route->sender;
  }
  if (!sender) {
    sender = route->client->create_sender(topic);  // Attaching waits on the network: unlocked.
    std::lock_guard lock(route->status_mutex);
    if (!route->sender) route->sender = sender;
  }
  sender->send(message);
}

ledger::Ledger& Service::ledger() { return *impl_->ledger; }
const config::Config& Service::config() const { return impl_->config; }

std::vector<SubscriptionStatus> Service::subscriptions() const {
  std::vector<SubscriptionStatus> out;
  for (const auto& route : impl_->routes) {
    std::lock_guard lock(route->status_mutex);
    out.push_back(route->status);
  }
  return out;
}

Counters Service::counters() const {
  const auto& c = impl_->counters;
  return {c.received, c.routed,  c.deferred, c.completed, c.dead_lettered,
          c.failed,   c.retries, c.no_match, c.malformed};
}

std::vector<HandlerStats> Service::handler_stats() const {
  std::vector<HandlerStats> out;
  for (const auto& route : impl_->routes) {
    std::lock_guard lock(route->status_mutex);
    out.insert(out.end(), route->stats.begin(), route->stats.end());
  }
  return out;
}

std::size_t Service::in_flight() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->active.size();
}

}  // namespace metro::dispatch

namespace metro {

std::future<void> complete_deferred_message_async(std::int64_t sequence_number,
                                                  const std::string& topic_name,
                                                  const std::string& subscription_name) {
  std::lock_guard lock(dispatch::registry_mutex);
  for (auto* service : dispatch::registry) {
    if (service->route_for(topic_name, subscription_name) != nullptr) {
      return service->complete({topic_name, subscription_name, sequence_number});
    }
  }
  throw UnknownMessageError("no running metro service in this process consumes " + topic_name +
                            "/" + subscription_name);
}

void complete_deferred_message(std::int64_t sequence_number, const std::string& topic_name,
                               const std::string& subscription_name) {
  complete_deferred_message_async(sequence_number, topic_name, subscription_name).get();
}

}  // namespace metro
