// The public face of the emulator: options in, a running server out, and the test hooks. The
// server itself is server.hpp.

#include <mutex>
#include <thread>

#include <metro/emulator/emulator.hpp>

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
  mutable std::mutex relays_mutex;
  std::unique_ptr<LatencyRelay> plain_relay;  // set while running with a latency
  std::unique_ptr<LatencyRelay> tls_relay;
};

Emulator::Emulator(EmulatorOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Emulator::~Emulator() { stop(); }

void Emulator::start() {
  impl_->server.start();
  const auto& o = impl_->public_options;
  if (o.latency.count() <= 0) return;
  try {
    std::lock_guard lock(impl_->relays_mutex);
    impl_->plain_relay =
        std::make_unique<LatencyRelay>(o.host, o.port, impl_->server.port(), o.latency);
    if (o.tls_port) {
      impl_->tls_relay =
          std::make_unique<LatencyRelay>(o.host, *o.tls_port, *impl_->server.tls_port(), o.latency);
    }
  } catch (...) {
    stop();
    throw;
  }
}

void Emulator::stop() {
  // The server closes its connections cleanly through the relays first; then they go.
  impl_->server.stop();
  std::lock_guard lock(impl_->relays_mutex);
  impl_->plain_relay.reset();
  impl_->tls_relay.reset();
}

std::uint16_t Emulator::port() const {
  std::lock_guard lock(impl_->relays_mutex);
  return impl_->plain_relay ? impl_->plain_relay->port() : impl_->server.port();
}

std::optional<std::uint16_t> Emulator::tls_port() const {
  std::lock_guard lock(impl_->relays_mutex);
  if (impl_->tls_relay) return impl_->tls_relay->port();
  return impl_->server.tls_port();
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

}  // namespace metro::emulator
