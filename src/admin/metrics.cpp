// Prometheus text exposition (version 0.0.4) of a service's counters, handler durations, ledger
// states, oldest deferred age and connection states.

#include <sstream>

#include <metro/admin/server.hpp>

namespace metro::admin {
namespace {

/// A label value with `\`, `"` and newlines escaped.
std::string label(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string labels(const std::string& topic, const std::string& subscription) {
  return "topic=\"" + label(topic) + "\",subscription=\"" + label(subscription) + "\"";
}

void header(std::ostringstream& out, const char* name, const char* type, const char* help) {
  out << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
}

}  // namespace

std::string metrics_text(dispatch::Service& service) {
  std::ostringstream out;
  auto c = service.counters();
  auto counter = [&](const char* name, const char* help, std::uint64_t value) {
    header(out, name, "counter", help);
    out << name << ' ' << value << '\n';
  };
  counter("metro_messages_received_total", "Messages received from Service Bus.", c.received);
  counter("metro_messages_routed_total", "Handler tasks created (one per matching handler).",
          c.routed);
  counter("metro_messages_deferred_total", "Messages deferred while their handlers run.",
          c.deferred);
  counter("metro_messages_completed_total", "Deferred messages completed.", c.completed);
  header(out, "metro_messages_dead_lettered_total", "counter",
         "Messages dead-lettered, by reason (NoHandler, MalformedBody, HandlerFailed, operator).");
  for (const auto& [reason, n] : c.dead_lettered_by_reason) {
    out << "metro_messages_dead_lettered_total{reason=\"" << label(reason) << "\"} " << n << '\n';
  }
  counter("metro_messages_failed_total", "Messages parked as failed after their last attempt.",
          c.failed);
  counter("metro_handler_retries_total", "Handler runs scheduled again after a failure.",
          c.retries);
  counter("metro_messages_unrouted_total", "Messages no handler matched.", c.no_match);
  counter("metro_messages_malformed_total", "Messages whose body is not JSON.", c.malformed);

  header(out, "metro_handler_duration_seconds", "histogram", "How long handler runs took.");
  for (const auto& h : service.handler_stats()) {
    auto l = labels(h.topic, h.subscription) + ",handler=\"" + label(h.handler) + "\"";
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < h.buckets.size(); ++i) {
      cumulative += h.buckets[i];
      out << "metro_handler_duration_seconds_bucket{" << l << ",le=\"";
      if (i < dispatch::HandlerStats::kBounds.size()) {
        out << dispatch::HandlerStats::kBounds[i];
      } else {
        out << "+Inf";
      }
      out << "\"} " << cumulative << '\n';
    }
    out << "metro_handler_duration_seconds_sum{" << l << "} " << h.sum_seconds << '\n';
    out << "metro_handler_duration_seconds_count{" << l << "} " << h.count << '\n';
  }

  auto subscriptions = service.subscriptions();
  header(out, "metro_ledger_messages", "gauge", "Ledger rows per subscription and state.");
  for (const auto& s : subscriptions) {
    for (const auto& [state, n] : service.ledger().counts(s.topic, s.subscription)) {
      out << "metro_ledger_messages{" << labels(s.topic, s.subscription) << ",state=\""
          << to_string(state) << "\"} " << n << '\n';
    }
  }
  header(out, "metro_oldest_deferred_age_seconds", "gauge",
         "Age of the oldest message still deferred (not completed or dead-lettered); 0 if none.");
  auto now = std::chrono::system_clock::now();
  for (const auto& s : subscriptions) {
    auto oldest = service.ledger().oldest_deferred(s.topic, s.subscription);
    out << "metro_oldest_deferred_age_seconds{" << labels(s.topic, s.subscription) << "} "
        << (oldest ? std::chrono::duration<double>(now - *oldest).count() : 0.0) << '\n';
  }
  header(out, "metro_subscription_connected", "gauge",
         "1 when the subscription's connection is up, else 0.");
  for (const auto& s : subscriptions) {
    out << "metro_subscription_connected{" << labels(s.topic, s.subscription) << "} "
        << (s.state == sb::ConnectionState::kConnected ? 1 : 0) << '\n';
  }
  header(out, "metro_subscription_reconnects_total", "counter",
         "Times the subscription's connection came back after it was lost.");
  for (const auto& s : subscriptions) {
    out << "metro_subscription_reconnects_total{" << labels(s.topic, s.subscription) << "} "
        << s.reconnects << '\n';
  }
  header(out, "metro_messages_in_flight", "gauge",
         "Deferred messages this process is handling (queued or running).");
  out << "metro_messages_in_flight " << service.in_flight() << '\n';
  // The instances sharing the ledger, as their heartbeats say (this one included).
  std::vector<ledger::Instance> instances;
  try {
    instances = service.instances();
  } catch (const Error&) {
    // The ledger cannot be read now: the per-instance gauges are left out of this scrape.
  }
  header(out, "metro_instance_up", "gauge",
         "1 while the instance's heartbeat is younger than its lease, else 0.");
  for (const auto& i : instances) {
    out << "metro_instance_up{instance=\"" << label(i.id) << "\"} " << (i.live ? 1 : 0) << '\n';
  }
  header(out, "metro_instance_messages_in_flight", "gauge",
         "Messages the instance was handling at its last heartbeat.");
  for (const auto& i : instances) {
    out << "metro_instance_messages_in_flight{instance=\"" << label(i.id) << "\"} " << i.in_flight
        << '\n';
  }
  header(out, "metro_instance_heartbeat_age_seconds", "gauge",
         "Seconds since the instance's last heartbeat.");
  for (const auto& i : instances) {
    out << "metro_instance_heartbeat_age_seconds{instance=\"" << label(i.id) << "\"} "
        << std::max(0.0, std::chrono::duration<double>(now - i.heartbeat).count()) << '\n';
  }
  out << service.handler_metrics();  // Celery tasks by state, when the config sends any.
  return out.str();
}

}  // namespace metro::admin
