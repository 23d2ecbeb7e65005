// The public face of the emulator: options in, a running server out, and the test hooks. The
// server itself is server.hpp.

#include <thread>

#include <metro/emulator/emulator.hpp>

#include "../common/thread_annotations.hpp"
#include "latency_relay.hpp"
#include "server.hpp"

namespace metro::emulator {

namespace {

// With a latency, the server listens on loopback ports of its own and relays take the public ones.
EmulatorOptions behind_relays(EmulatorOptions options) {
  if (options.latency.count() <= 0) return options;
  options.host = "127.0.0.1";
  options.port = 0;
  if (options.tls_port) options.tls_port = 0;
  return options;
}

}  // namespace

struct Emulator::Impl {
  explicit Impl(EmulatorOptions o) : public_options(o), server(behind_relays(std::move(o))) {}
  const EmulatorOptions public_options;  // the host, ports and latency clients see
  Server server;
  // Held across the whole of start and stop, so that neither sees the other half done.
  mutable Mutex lifecycle;
  std::unique_ptr<LatencyRelay> plain_relay GUARDED_BY(lifecycle);  // while running with a latency
  std::unique_ptr<LatencyRelay> tls_relay GUARDED_BY(lifecycle);
  // The ports clients were given at the last start (kept after a stop).
  std::uint16_t port GUARDED_BY(lifecycle) = 0;
  std::optional<std::uint16_t> tls_port GUARDED_BY(lifecycle);

  void stop_locked() REQUIRES(lifecycle) {
    // The server closes its connections cleanly through the relays first; then they go.
    server.stop();
    plain_relay.reset();
    tls_relay.reset();
  }
};

Emulator::Emulator(EmulatorOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Emulator::~Emulator() { stop(); }

void Emulator::start() {
  MutexLock lock(impl_->lifecycle);
  impl_->server.start();
  const auto& o = impl_->public_options;
  if (o.latency.count() <= 0) {
    impl_->port = impl_->server.port();
    impl_->tls_port = impl_->server.tls_port();
    return;
  }
  try {
    impl_->plain_relay =
        std::make_unique<LatencyRelay>(o.host, o.port, impl_->server.port(), o.latency);
    impl_->port = impl_->plain_relay->port();
    if (o.tls_port) {
      impl_->tls_relay =
          std::make_unique<LatencyRelay>(o.host, *o.tls_port, *impl_->server.tls_port(), o.latency);
      impl_->tls_port = impl_->tls_relay->port();
    }
  } catch (...) {
    impl_->stop_locked();
    throw;
  }
}

void Emulator::stop() {
  MutexLock lock(impl_->lifecycle);
  impl_->stop_locked();
}

std::uint16_t Emulator::port() const {
  MutexLock lock(impl_->lifecycle);
  return impl_->port;
}

std::optional<std::uint16_t> Emulator::tls_port() const {
  MutexLock lock(impl_->lifecycle);
  return impl_->tls_port;
}

std::filesystem::path Emulator::certificate_file() const {
  return impl_->server.certificate_file();
}

std::string Emulator::connection_string() const {
  return "Endpoint=sb://localhost:" + std::to_string(port()) +
         ";SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
         "UseDevelopmentEmulator=true";
}

void Emulator::expire_locks(std::string_view entity) {
  std::string path(entity);
  impl_->server.call([&] {
    auto* e = impl_->server.broker().find(path);
    if (e == nullptr) throw InvalidArgument("no entity '" + path + "'");
    impl_->server.broker().expire_locks(*e, now_ms());
  });
}

void Emulator::drop_connections() {
  impl_->server.call([&] { return impl_->server.drop_all_connections(); });
  // Return once every dropped connection is gone, so a test's next step meets a clean slate.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (impl_->server.call([&] { return impl_->server.dropping(); }) > 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      throw Error("the emulator could not drop its connections within 10 s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

EntityCounts Emulator::counts(std::string_view entity) const {
  std::string path(entity);
  return impl_->server.call([&] {
    auto* e = impl_->server.broker().find(path);
    if (e == nullptr) throw InvalidArgument("no entity '" + path + "'");
    return impl_->server.broker().counts(*e);
  });
}

EntityTables Emulator::tables(std::string_view entity) const {
  std::string path(entity);
  return impl_->server.call([&] {
    auto* e = impl_->server.broker().find(path);
    if (e == nullptr) throw InvalidArgument("no entity '" + path + "'");
    auto t = impl_->server.broker().tables(*e);
    t.unsettled_deliveries = impl_->server.unsettled_deliveries(*e);
    return t;
  });
}

}  // namespace metro::emulator
