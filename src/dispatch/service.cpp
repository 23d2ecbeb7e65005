// The service: builds the parts and starts and stops them in order. Each part owns its thread
// domain and its lock:
//   Listener (listener.cpp)   receives, with back-pressure, on a pool of listener threads;
//   Intake (intake.cpp)       classifies, settles by policy, records then defers;
//   InFlight (in_flight.cpp)  what happens after each handler run (pure state machine);
//   TaskRunner (task_runner.cpp) runs handlers on the task queue's workers;
//   Settler (settler.cpp)     completes and dead-letters by sequence number, batched;
//   Held (held.cpp)           `defer = "when-slow"`: messages handled under their lock, deferred
//                             only when slow, failing or left to a handler to complete;
//   Reconciler (reconciler.cpp) resolves and resumes what a previous run left;
//   Reaper (reaper.cpp)       stale deferrals, orphans, lapsed leases, retention;
//   Heartbeat (heartbeat.cpp) this instance's heartbeat and leases in the shared ledger;
//   completion_registry.cpp   metro::complete_deferred_message for running services.
// Members of Impl are declared in start order; `stop` stops them in reverse, and the destructor
// runs only after `stop` joined every thread the service started.

#include <algorithm>
#include <atomic>

#include <unistd.h>

#include <spdlog/spdlog.h>

#include <metro/dispatch/service.hpp>

#include "completion_registry.hpp"
#include "counters.hpp"
#include "held.hpp"
#include "heartbeat.hpp"
#include "in_flight.hpp"
#include "intake.hpp"
#include "jobs.hpp"
#include "ledger_health.hpp"
#include "listener.hpp"
#include "naming.hpp"
#include "reaper.hpp"
#include "reconciler.hpp"
#include "route.hpp"
#include "settler.hpp"
#include "task_runner.hpp"
#include "trace.hpp"

namespace metro::dispatch {

using ledger::MessageKey;
using ledger::State;
using std::chrono::milliseconds;

namespace {

constexpr milliseconds kLockRenewal{std::chrono::minutes(5)};
constexpr milliseconds kInterruptWait{std::chrono::seconds(10)};  // After interrupting runs.
constexpr std::chrono::seconds kReadinessProbeAge{5};  // Readiness probes an idle ledger.

Routes build_routes(const config::Config& config, const ServiceOptions& options) {
  const auto& functions = options.functions;
  Routes routes;
  std::vector<std::string> missing;
  for (std::size_t i = 0; i < config.subscriptions.size(); ++i) {
    routes.push_back(std::make_unique<Route>(i, config.subscriptions[i], functions,
                                             options.handler_factory.get(), &missing));
  }
  if (!missing.empty()) {
    std::string names;
    for (const auto& m : missing) names += (names.empty() ? "'" : ", '") + m + "'";
    std::string known;
    for (const auto& [name, f] : functions) known += (known.empty() ? "" : ", ") + name;
    throw InvalidArgument("the config names C++ handlers that this program does not register: " +
                          names + " (registered: " + (known.empty() ? "none" : known) +
                          "); register them with metro::App::handle or use exec/http handlers");
  }
  return routes;
}

std::shared_ptr<ledger::Ledger> open_ledger(const config::Config& config) {
  ledger::OpenOptions options;
  // Writes share one commit at a time; reads (the API, resuming, the reaper's exclusive right)
  // take the other connections.
  options.connections = static_cast<std::size_t>(std::clamp(config.metro.workers / 2 + 3, 3, 12));
  options.completed_rows = config.metro.completed_rows == config::MetroOptions::CompletedRows::kFull
                               ? ledger::CompletedRows::kFull
                               : ledger::CompletedRows::kLean;
  return ledger::open_ledger(config.metro.ledger, options);
}

ledger::InstanceInfo instance_of(const config::MetroOptions& m) {
  ledger::InstanceInfo me;
  me.id = m.instance_id.empty() ? default_instance_id() : m.instance_id;
  me.host = host_name();
  me.pid = ::getpid();
  me.lease = m.lease;
  return me;
}

std::shared_ptr<TaskQueue> make_queue(const config::Config& config,
                                      const std::shared_ptr<TaskQueue>& given) {
  if (given) return given;
  return make_in_process_queue(static_cast<std::size_t>(std::max(1, config.metro.workers)));
}

/// Messages in hand at once: 4 × workers (those waiting for a worker hold no lock, and more would
/// only take messages from other instances), plus `[celery] max_in_flight` when runs go on
/// outside metro (a Celery task out holds no worker; the workers' cluster bounds how many run).
std::size_t capacity(const config::Config& config, const Routes& routes, const TaskQueue& queue) {
  std::size_t capacity = 4 * queue.workers();
  for (const auto& route : routes) {
    for (std::size_t i = 0; i < route->handlers.size(); ++i) {
      if (route->asynchronous(i)) {
        return capacity + static_cast<std::size_t>(std::max(1, config.celery.max_in_flight));
      }
    }
  }
  return capacity;
}

}  // namespace

struct Service::Impl : Completer {
  // ---- parts, in start order (stopped in reverse) ----------------------------------------------
  // The ledger, the routes and the queue come first because the parts after them are built on
  // them; `stop` has joined the queue's workers and every part's thread before any member is
  // destroyed, so nothing runs against a part that is gone.
  const config::Config config;
  ServiceOptions options;
  const ledger::InstanceInfo me;
  std::shared_ptr<ledger::Ledger> ledger;
  Routes routes;
  ServiceCounters counters;
  LedgerHealth health;
  std::shared_ptr<TaskQueue> queue;
  // Deferred messages waiting for a worker hold no lock, so a small queue ahead of the workers
  // costs nothing and keeps them busy; more would only take messages from other instances.
  InFlight in_flight;
  std::atomic<bool> stopping{false};
  Settler settler;
  Held held;
  TaskRunner runner;
  Reconciler reconciler;
  Intake intake;
  Listener listener;
  Reaper reaper;
  Heartbeat heartbeat;
  JobRunner jobs;
  Mutex lifecycle_mutex;  // start and stop.
  bool started GUARDED_BY(lifecycle_mutex) = false;
  bool stopped GUARDED_BY(lifecycle_mutex) = false;

  Impl(config::Config c, ServiceOptions o)
      : config(std::move(c)),
        options(std::move(o)),
        me(instance_of(config.metro)),
        ledger(options.ledger ? options.ledger : open_ledger(config)),
        routes(build_routes(config, options)),
        queue(make_queue(config, options.queue)),
        in_flight(capacity(config, routes, *queue)),
        settler(*ledger, counters, health),
        held(*ledger, in_flight, counters, health, config.metro.ledger_body_limit),
        runner(routes, *ledger, in_flight, held, settler, *queue, counters, health, stopping),
        reconciler(routes, *ledger, in_flight, runner, settler, health,
                   config.metro.ledger_body_limit),
        intake(*ledger, runner, in_flight, held, counters, health,
               config.metro.ledger_body_limit),
        listener(routes, intake, in_flight, health, *ledger, counters),
        reaper(routes, reconciler, *ledger, health, config.metro, reaper_interval()),
        heartbeat(*ledger, in_flight, health, config.metro.lease),
        jobs(*ledger, job_actions(),
             {options.bulk_rate > 0 ? options.bulk_rate : config.admin.bulk_rate}) {
    in_flight.on_room([this] { listener.wake(); });
    health.on_recovered([this] { listener.wake(); });
  }

  ~Impl() override { stop(milliseconds(0)); }

  milliseconds reaper_interval() const {
    if (options.reaper_interval.count() > 0) return options.reaper_interval;
    // Often enough that a dead instance's messages are taken over within a lease or two.
    return std::clamp<milliseconds>(std::min(config.metro.deferred_deadline / 4, config.metro.lease),
                                    milliseconds(1000), std::chrono::minutes(1));
  }

  JobActions job_actions() {
    JobActions a;
    a.retry = [this](const MessageKey& key) { retry(key); };
    // A message already in the state the job asks for counts as done: a job stopped before a
    // settlement was confirmed acts on it again after the restart.
    a.complete = [this](const MessageKey& key) {
      if (already(key, State::kCompleted)) return settled_future();
      // Says why it cannot be completed.
      refuse_if_held_elsewhere(row_or_throw(canonical(route_or_throw(key), key)));
      return complete(key);
    };
    a.dead_letter = [this](const MessageKey& key, const std::string& reason,
                           const std::string& description) {
      if (already(key, State::kDeadLettered)) return settled_future();
      refuse_if_held_elsewhere(row_or_throw(canonical(route_or_throw(key), key)));
      return dead_letter(key, reason, description);
    };
    // The listener keeps at least half of the room in flight.
    a.room_for_retry = [this] { return 2 * in_flight.room() > 4 * queue->workers(); };
    return a;
  }

  /// Throws when another live instance is working on the message (its owner, in a state some
  /// instance works on): a bulk job leaves it alone, as a retry does (`claim_one`).
  void refuse_if_held_elsewhere(const ledger::DeferredMessage& row) {
    bool worked_on = row.state == State::kDeferring || row.state == State::kDeferred ||
                     row.state == State::kRunning || row.state == State::kRetrying;
    if (!worked_on || row.owner.empty() || row.owner == me.id) return;
    for (const auto& i : ledger->instances()) {
      if (i.id == row.owner && i.live) {
        throw ConflictError(name_of(row.key) + " is being handled right now by instance '" +
                            log_value(row.owner) + "'");
      }
    }
  }

  /// Whether the current record of `key` (generation 0) is in `state`.
  bool already(const MessageKey& key, State state) {
    if (key.generation != 0) return false;
    auto row = ledger->find(canonical(route_or_throw(key), key));
    return row && row->state == state;
  }

  static std::future<void> settled_future() {
    std::promise<void> done;
    done.set_value();
    return done.get_future();
  }

  bool consumes(std::string_view topic, std::string_view subscription) const override {
    return find_route(routes, topic, subscription) != nullptr;
  }

  Route& route_or_throw(const MessageKey& key) const {
    auto* route = find_route(routes, key.topic, key.subscription);
    if (route == nullptr) {
      throw UnknownMessageError("this metro does not consume " + log_value(key.topic) + "/" +
                                log_value(key.subscription));
    }
    return *route;
  }

  /// The key with the config's spelling of the names (the ledger's).
  static MessageKey canonical(const Route& route, MessageKey key) {
    key.topic = route.topic();
    key.subscription = route.subscription();
    return key;
  }

  // ---- start and stop ---------------------------------------------------------------------------

  void start() {
    MutexLock lock(lifecycle_mutex);
    if (started || stopped) throw ConflictError("a service starts once");
    started = true;
    // Before anything is claimed: this process's id and heartbeat in the ledger.
    ledger->join(me);
    heartbeat.start();
    connect();
    queue->start([this](const Task& task) { runner.run(task); });
    settler.start();
    held.start();
    auto stop_now = [this] { return stopping.load(); };
    for (auto& route : routes) {
      auto n = reconciler.resolve_deferring(*route, std::nullopt, true, stop_now);
      if (n > 0) {
        spdlog::info("{}: resolved {} interrupted deferral(s)", route->options.entity_path(), n);
      }
    }
    listener.start();
    reaper.start();  // Resumes unfinished messages as room allows, then scans for orphans.
    jobs.start();    // Bulk jobs a previous run left unfinished go on.
    spdlog::info("metro is consuming {} subscription(s) with {} workers as instance '{}'",
                 routes.size(), queue->workers(), log_value(me.id));
  }

  void connect() {
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
        auto chained = client_options.on_state_change;
        client_options.on_state_change = [sharing, chained](sb::ConnectionState state,
                                                            const std::string& why) {
          for (auto* r : sharing) r->connection_changed(state, why);
          if (chained) chained(state, why);
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
        auto status = route->status();
        std::string why =
            status.state != sb::ConnectionState::kConnected ? status.state_reason : "";
        throw Error("cannot consume " + route->options.entity_path() + " at " +
                        route->options.connection.host + ": " + e.what() +
                        (why.empty() ? "" : "; the connection: " + why),
                    e.is_transient());
      }
      route->connection_changed(client->state(), route->status().state_reason);
    }
  }

  bool stop(milliseconds grace) {
    MutexLock lock(lifecycle_mutex);
    if (stopped) return true;
    stopped = true;
    stopping = true;
    unregister_completer(this);
    if (!started) {
      runner.stop();
      held.stop();
      settler.stop();
      for (auto& route : routes) {
        if (route->client) route->client->close();
      }
      return true;
    }
    // A start that failed half-way (a subscription that cannot be reached) stops here too.
    jobs.stop();      // Between two messages; a job under way goes on at the next start.
    listener.stop();  // Nothing new comes in; what was received and not recorded is given back.
    reaper.stop();
    in_flight.notify();
    auto grace_ends = grace == milliseconds::max() ? std::chrono::steady_clock::time_point::max()
                                                   : std::chrono::steady_clock::now() + grace;
    std::vector<Task> dropped;
    bool finished = queue->shutdown(grace, &dropped);
    if (!dropped.empty()) {
      spdlog::info("{} handler run(s) not started; their messages stay deferred for the next start",
                   dropped.size());
    }
    // Celery tasks out: their outcomes are recorded as they come until the grace period ends.
    finished = runner.wait_for_async(grace_ends) && finished;
    if (!finished) {
      spdlog::warn(
          "handlers still running after the {} ms grace period are interrupted; their messages "
          "stay deferred and run again at the next start (Celery tasks go on on the workers: "
          "the next start picks their outcomes up)",
          grace.count());
      runner.interrupt();
      if (!queue->shutdown(kInterruptWait, nullptr)) {
        spdlog::warn("a C++ handler function is still running; metro waits for it to return");
        queue->shutdown(milliseconds::max(), nullptr);
      }
    }
    runner.stop();   // Outcomes that arrived are recorded; nothing is waited for any more.
    held.stop();     // Held messages whose handlers did not end are given back.
    settler.stop();  // Settles what is pending (retries get one last try).
    heartbeat.stop();
    try {
      // What is left goes to the other instances at once, not after a lease.
      ledger->leave();
    } catch (const Error& e) {
      spdlog::warn("ledger: cannot say this instance leaves ({}); its messages are taken over "
                   "once its lease lapses",
                   log_value(e.what()));
    }
    for (auto& route : routes) {
      if (route->client) route->client->close();
    }
    return finished;
  }

  // ---- operations ---------------------------------------------------------------------------

  ledger::DeferredMessage row_or_throw(const MessageKey& key) {
    auto row = ledger->find(key);
    if (!row) throw UnknownMessageError("no deferred message " + name_of(key) + " is known");
    if (key.generation != 0) {
      throw ConflictError(name_of(key) +
                          " is a superseded record (a newer message has this sequence number); "
                          "it is no longer in Service Bus");
    }
    if (row->state == State::kCompleted || row->state == State::kDeadLettered) {
      throw ConflictError(name_of(key) + " is already " + std::string(to_string(row->state)));
    }
    return *row;
  }

  std::future<void> complete(const MessageKey& k) override {
    auto& route = route_or_throw(k);
    auto key = canonical(route, k);
    if (key.generation != 0) row_or_throw(key);  // Throws the reason.
    in_flight.mark_completed(key);
    // A held message (`defer = "when-slow"`, not deferred) is completed on its link.
    if (auto on_link = held.complete(key)) return std::move(*on_link);
    auto row = ledger->find(key);
    if (row && row->state == State::kCompleted) return settled_future();
    return settler.enqueue(route, key, sb::Disposition::kComplete, {}, {},
                           row ? row->correlation_id : std::string());
  }

  static Settlement wait_for(std::future<void>& f, milliseconds wait) {
    if (f.wait_for(wait) != std::future_status::ready) return Settlement::kUnderWay;
    f.get();  // Throws the settlement's error.
    return Settlement::kDone;
  }

  void retry(const MessageKey& k) {
    auto& route = route_or_throw(k);
    auto key = canonical(route, k);
    row_or_throw(key);
    if (in_flight.contains(key)) {
      throw ConflictError(name_of(key) + " is being handled right now");
    }
    if (stopping) throw ConflictError("metro is shutting down");
    // Any instance's message: this one takes it (unless another live instance works on it) and
    // runs it here.
    auto claimed = ledger->claim_one(key);
    if (!claimed) {
      auto now = row_or_throw(key);
      throw ConflictError(name_of(key) + " is being handled right now by instance '" +
                          log_value(now.owner) + "'; retry it there, or once its lease lapses");
    }
    auto row = *claimed;
    // Recorded before the handlers are queued: a stop before they run leaves the message to be
    // resumed at the next start rather than parked as it was.
    ledger->set_state(key, State::kRetrying);
    if (!reconciler.resume(route, row, true)) {
      ledger->set_state(key, row.state);
      throw ConflictError("no handler of the current config matches " + name_of(key) +
                          "'s subject '" + log_value(row.subject) + "'");
    }
    spdlog::info("{}{}: retried by request", name_of(key, row.correlation_id),
                 trace_suffix(row.trace_parent));
  }

  std::future<void> dead_letter(const MessageKey& k, const std::string& reason,
                                const std::string& description) {
    auto& route = route_or_throw(k);
    auto key = canonical(route, k);
    auto row = row_or_throw(key);
    if (in_flight.contains(key)) {
      throw ConflictError(name_of(key) + " is being handled right now");
    }
    return settler.enqueue(route, key, sb::Disposition::kDeadLetter, clip(reason, 256),
                           clip(description, kDescriptionLimit), row.correlation_id,
                           DeadLetterCause::kOperator);
  }

  Readiness readiness() {
    Readiness r;
    if (health.ok() && LedgerHealth::Clock::now() - health.last_success() > kReadinessProbeAge) {
      if (auto problem = ledger->write_problem()) {
        health.failed(*problem);
      } else {
        health.succeeded();
      }
    }
    if (auto problem = health.problem()) {
      r.problems.push_back("the ledger cannot be written: " + *problem);
    }
    for (const auto& route : routes) {
      auto s = route->status();
      if (s.state != sb::ConnectionState::kConnected) {
        r.problems.push_back(s.topic + "/" + s.subscription + " is not connected" +
                             (s.state_reason.empty() ? "" : ": " + log_value(s.state_reason)));
      }
    }
    {
      MutexLock lock(lifecycle_mutex);
      if (!started) r.problems.push_back("metro has not started");
      if (stopped) r.problems.push_back("metro is stopping");
    }
    r.ready = r.problems.empty();
    return r;
  }
};

// ---- Service -------------------------------------------------------------------------------

Service::Service(config::Config config, ServiceOptions options)
    : impl_(std::make_shared<Impl>(std::move(config), std::move(options))) {}

Service::~Service() { impl_->stop(milliseconds(0)); }

void Service::start() {
  impl_->start();
  register_completer(impl_);
}
bool Service::stop(milliseconds grace) { return impl_->stop(grace); }
std::future<void> Service::complete(const MessageKey& key) { return impl_->complete(key); }
Settlement Service::complete(const MessageKey& key, milliseconds wait) {
  auto f = impl_->complete(key);
  return Impl::wait_for(f, wait);
}
void Service::retry(const MessageKey& key) { impl_->retry(key); }
void Service::dead_letter(const MessageKey& key, const std::string& reason,
                          const std::string& description) {
  impl_->dead_letter(key, reason, description).get();
}
Settlement Service::dead_letter(const MessageKey& key, const std::string& reason,
                                const std::string& description, milliseconds wait) {
  auto f = impl_->dead_letter(key, reason, description);
  return Impl::wait_for(f, wait);
}

void Service::publish(const std::string& topic, const sb::Message& message) {
  Route* route = nullptr;
  for (auto& r : impl_->routes) {
    if (same_name(r->topic(), topic) && r->client) route = r.get();
  }
  if (route == nullptr) {
    throw UnknownMessageError("no subscription of this metro is on the topic '" + log_value(topic) +
                              "'");
  }
  auto sent = message;
  auto it = sent.application_properties.find("traceparent");
  const auto* given =
      it == sent.application_properties.end() ? nullptr : std::get_if<std::string>(&it->second);
  if (given == nullptr || !parse_traceparent(*given)) {
    sent.application_properties["traceparent"] = new_traceparent();
  }
  route->sender().send(sent);
}

namespace {

/// The states a bulk action takes: messages waiting in Service Bus, not being handled.
constexpr std::array<State, 4> kBulkStates = {State::kDeferred, State::kRetrying, State::kFailed,
                                              State::kOrphaned};

ledger::Query bulk_query(const JobRequest& request) {
  auto q = request.filter;
  if (q.state && std::find(kBulkStates.begin(), kBulkStates.end(), *q.state) == kBulkStates.end()) {
    throw InvalidArgument(
        "a bulk action acts on deferred, retrying, failed and orphaned messages, "
        "not on " +
        std::string(to_string(*q.state)) + " ones");
  }
  if (!q.state && !q.failure_group) q.any_state.assign(kBulkStates.begin(), kBulkStates.end());
  q.current_only = true;
  q.after.reset();
  return q;
}

}  // namespace

std::size_t Service::count_for_job(const JobRequest& request) {
  return impl_->ledger->count(bulk_query(request));
}

ledger::Job Service::start_job(const JobRequest& request) {
  {
    MutexLock lock(impl_->lifecycle_mutex);
    if (impl_->stopped) throw ConflictError("metro is shutting down");
  }
  ledger::Job job;
  job.id = new_job_id();
  job.action = request.action;
  job.filter = request.filter_text;
  job.reason = clip(request.reason, 256);
  job.description = clip(request.description, kDescriptionLimit);
  job.created_by = request.requested_by;
  job = impl_->ledger->create_job(job, bulk_query(request));
  impl_->jobs.wake();
  return job;
}

bool Service::cancel_job(const std::string& id, const std::string& requested_by) {
  return impl_->jobs.cancel(id, requested_by);
}

ledger::Ledger& Service::ledger() { return *impl_->ledger; }
const config::Config& Service::config() const { return impl_->config; }

std::vector<SubscriptionStatus> Service::subscriptions() const {
  std::vector<SubscriptionStatus> out;
  for (const auto& route : impl_->routes) out.push_back(route->status());
  return out;
}

Readiness Service::readiness() const { return impl_->readiness(); }

Counters Service::counters() const { return impl_->counters.snapshot(); }

std::vector<HandlerStats> Service::handler_stats() const {
  std::vector<HandlerStats> out;
  for (const auto& route : impl_->routes) {
    auto stats = route->stats();
    out.insert(out.end(), stats.begin(), stats.end());
  }
  return out;
}

std::size_t Service::in_flight() const { return impl_->in_flight.size(); }

std::string Service::instance_id() const { return impl_->me.id; }

std::vector<ledger::Instance> Service::instances() const { return impl_->ledger->instances(); }

std::string Service::handler_metrics() const {
  return impl_->options.handler_factory ? impl_->options.handler_factory->metrics() : std::string();
}

}  // namespace metro::dispatch

namespace metro {

std::future<void> complete_deferred_message_async(std::int64_t sequence_number,
                                                  const std::string& topic_name,
                                                  const std::string& subscription_name) {
  // Found under the registry's lock; completed without it.
  auto service = dispatch::find_completer(topic_name, subscription_name);
  if (!service) {
    throw UnknownMessageError("no running metro service in this process consumes " +
                              dispatch::log_value(topic_name) + "/" +
                              dispatch::log_value(subscription_name));
  }
  return service->complete({topic_name, subscription_name, sequence_number});
}

void complete_deferred_message(std::int64_t sequence_number, const std::string& topic_name,
                               const std::string& subscription_name) {
  complete_deferred_message_async(sequence_number, topic_name, subscription_name).get();
}

}  // namespace metro
