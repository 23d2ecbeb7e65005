// Prometheus metrics of a service, built at each scrape from the service's own state (counters,
// handler durations, ledger states, failure groups, bulk jobs) as prometheus-cpp metric families,
// and written by prometheus-cpp's text serializer (exposition format 0.0.4): the library keeps
// the format (escaping, number formatting, cumulative buckets) right, metro keeps the values.

#include <algorithm>
#include <limits>

#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include <metro/admin/server.hpp>

namespace metro::admin {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

/// Failure groups reported one by one (the largest); the rest only in `metro_failure_groups`.
constexpr std::size_t kGroupSeries = 100;

MetricFamily family(const char* name, const char* help, MetricType type) {
  MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  return f;
}

ClientMetric value(std::vector<ClientMetric::Label> labels, double v, MetricType type) {
  ClientMetric m;
  m.label = std::move(labels);
  if (type == MetricType::Counter) {
    m.counter.value = v;
  } else {
    m.gauge.value = v;
  }
  return m;
}

std::vector<ClientMetric::Label> subscription(const std::string& topic, const std::string& sub) {
  return {{"topic", topic}, {"subscription", sub}};
}

}  // namespace

std::string metrics_text(dispatch::Service& service) {
  std::vector<MetricFamily> out;
  auto c = service.counters();
  auto counter = [&](const char* name, const char* help, std::uint64_t v) {
    auto f = family(name, help, MetricType::Counter);
    f.metric.push_back(value({}, static_cast<double>(v), MetricType::Counter));
    out.push_back(std::move(f));
  };
  counter("metro_messages_received_total", "Messages received from Service Bus.", c.received);
  counter("metro_messages_routed_total", "Handler tasks created (one per matching handler).",
          c.routed);
  counter("metro_messages_deferred_total",
          "Messages deferred while their handlers run (with defer = when-slow: the slow ones).",
          c.deferred);
  counter("metro_messages_completed_total",
          "Messages completed (deferred ones, and held ones on their link).", c.completed);
  {
    auto f = family("metro_messages_dead_lettered_total",
                    "Messages dead-lettered, by reason (NoHandler, MalformedBody, HandlerFailed, "
                    "operator).",
                    MetricType::Counter);
    for (const auto& [reason, n] : c.dead_lettered_by_reason) {
      f.metric.push_back(value({{"reason", reason}}, static_cast<double>(n), MetricType::Counter));
    }
    out.push_back(std::move(f));
  }
  counter("metro_messages_failed_total", "Messages parked as failed after their last attempt.",
          c.failed);
  counter("metro_handler_retries_total", "Handler runs scheduled again after a failure.",
          c.retries);
  counter("metro_messages_unrouted_total", "Messages no handler matched.", c.no_match);
  counter("metro_messages_malformed_total", "Messages whose body is not JSON.", c.malformed);

  {
    auto f = family("metro_handler_duration_seconds", "How long handler runs took.",
                    MetricType::Histogram);
    for (const auto& h : service.handler_stats()) {
      ClientMetric m;
      m.label = subscription(h.topic, h.subscription);
      m.label.push_back({"handler", h.handler});
      std::uint64_t cumulative = 0;
      for (std::size_t i = 0; i < h.buckets.size(); ++i) {
        cumulative += h.buckets[i];
        m.histogram.bucket.push_back({cumulative, i < dispatch::HandlerStats::kBounds.size()
                                                      ? dispatch::HandlerStats::kBounds[i]
                                                      : std::numeric_limits<double>::infinity()});
      }
      m.histogram.sample_count = h.count;
      m.histogram.sample_sum = h.sum_seconds;
      f.metric.push_back(std::move(m));
    }
    out.push_back(std::move(f));
  }

  auto& ledger = service.ledger();
  auto subscriptions = service.subscriptions();
  auto now = std::chrono::system_clock::now();
  auto ledger_messages =
      family("metro_ledger_messages", "Ledger rows per subscription and state.", MetricType::Gauge);
  auto oldest = family(
      "metro_oldest_deferred_age_seconds",
      "Age of the oldest message still deferred (not completed or dead-lettered); 0 if none.",
      MetricType::Gauge);
  auto connected = family("metro_subscription_connected",
                          "1 when the subscription's connection is up, else 0.", MetricType::Gauge);
  auto reconnects = family("metro_subscription_reconnects_total",
                           "Times the subscription's connection came back after it was lost.",
                           MetricType::Counter);
  for (const auto& s : subscriptions) {
    for (const auto& [state, n] : ledger.counts(s.topic, s.subscription)) {
      auto labels = subscription(s.topic, s.subscription);
      labels.push_back({"state", std::string(to_string(state))});
      ledger_messages.metric.push_back(
          value(std::move(labels), static_cast<double>(n), MetricType::Gauge));
    }
    auto since = ledger.oldest_deferred(s.topic, s.subscription);
    oldest.metric.push_back(value(subscription(s.topic, s.subscription),
                                  since ? std::chrono::duration<double>(now - *since).count() : 0.0,
                                  MetricType::Gauge));
    connected.metric.push_back(value(subscription(s.topic, s.subscription),
                                     s.state == sb::ConnectionState::kConnected ? 1 : 0,
                                     MetricType::Gauge));
    reconnects.metric.push_back(value(subscription(s.topic, s.subscription),
                                      static_cast<double>(s.reconnects), MetricType::Counter));
  }
  out.push_back(std::move(ledger_messages));
  out.push_back(std::move(oldest));
  out.push_back(std::move(connected));
  out.push_back(std::move(reconnects));
  {
    auto f = family("metro_messages_in_flight",
                    "Deferred messages this process is handling (queued or running).",
                    MetricType::Gauge);
    f.metric.push_back(value({}, static_cast<double>(service.in_flight()), MetricType::Gauge));
    out.push_back(std::move(f));
  }

  // Failure groups: how many, and the members of the largest, by state.
  {
    ledger::FailureQuery q;
    q.limit = 1000;
    auto groups = ledger.failure_groups(q);
    auto count = family("metro_failure_groups",
                        "Failure groups: failed and retrying messages by subscription, handler "
                        "and normalised error.",
                        MetricType::Gauge);
    count.metric.push_back(value({}, static_cast<double>(groups.size()), MetricType::Gauge));
    out.push_back(std::move(count));
    auto members =
        family("metro_failure_group_messages",
               "Messages of a failure group (the 100 largest), by state.", MetricType::Gauge);
    for (std::size_t i = 0; i < groups.size() && i < kGroupSeries; ++i) {
      const auto& g = groups[i];
      for (auto [state, n] : {std::pair{"failed", g.failed}, std::pair{"retrying", g.retrying}}) {
        auto labels = subscription(g.topic, g.subscription);
        labels.push_back({"handler", g.handler});
        labels.push_back({"group", g.id});
        labels.push_back({"state", state});
        members.metric.push_back(
            value(std::move(labels), static_cast<double>(n), MetricType::Gauge));
      }
    }
    out.push_back(std::move(members));
  }

  // Bulk jobs: how many in each state (of those the ledger keeps), and the progress of those
  // not finished.
  {
    auto jobs = ledger.jobs(1000, false);
    auto by_state =
        family("metro_jobs", "Bulk jobs the ledger keeps, by state.", MetricType::Gauge);
    for (auto state :
         {ledger::JobState::kQueued, ledger::JobState::kRunning, ledger::JobState::kCompleted,
          ledger::JobState::kCancelled, ledger::JobState::kFailed}) {
      std::size_t n = 0;
      for (const auto& j : jobs) n += j.state == state ? 1 : 0;
      by_state.metric.push_back(value({{"state", std::string(to_string(state))}},
                                      static_cast<double>(n), MetricType::Gauge));
    }
    out.push_back(std::move(by_state));
    auto progress =
        family("metro_job_messages",
               "Messages of each queued or running bulk job, by kind: total, done, failed.",
               MetricType::Gauge);
    for (const auto& j : jobs) {
      if (j.state != ledger::JobState::kQueued && j.state != ledger::JobState::kRunning) continue;
      for (auto [what, n] : {std::pair{"total", j.total}, std::pair{"done", j.done},
                             std::pair{"failed", j.failed}}) {
        progress.metric.push_back(
            value({{"job", j.id}, {"action", std::string(to_string(j.action))}, {"kind", what}},
                  static_cast<double>(n), MetricType::Gauge));
      }
    }
    out.push_back(std::move(progress));
  }

  // The instances sharing the ledger, as their heartbeats say (this one included).
  std::vector<ledger::Instance> instances;
  try {
    instances = service.instances();
  } catch (const Error&) {
    // The ledger cannot be read now: the per-instance gauges are left out of this scrape.
  }
  auto up = family("metro_instance_up",
                   "1 while the instance's heartbeat is younger than its lease, else 0.",
                   MetricType::Gauge);
  auto instance_in_flight =
      family("metro_instance_messages_in_flight",
             "Messages the instance was handling at its last heartbeat.", MetricType::Gauge);
  auto heartbeat_age = family("metro_instance_heartbeat_age_seconds",
                              "Seconds since the instance's last heartbeat.", MetricType::Gauge);
  for (const auto& i : instances) {
    up.metric.push_back(value({{"instance", i.id}}, i.live ? 1 : 0, MetricType::Gauge));
    instance_in_flight.metric.push_back(
        value({{"instance", i.id}}, static_cast<double>(i.in_flight), MetricType::Gauge));
    heartbeat_age.metric.push_back(
        value({{"instance", i.id}},
              std::max(0.0, std::chrono::duration<double>(now - i.heartbeat).count()),
              MetricType::Gauge));
  }
  out.push_back(std::move(up));
  out.push_back(std::move(instance_in_flight));
  out.push_back(std::move(heartbeat_age));
  // Celery tasks by state, when the config sends any (already in the exposition format).
  return prometheus::TextSerializer().Serialize(out) + service.handler_metrics();
}

}  // namespace metro::admin
