// The public face of the emulator: options in, a running server out, and the test hooks. The
// server itself is server.hpp.

#include <thread>

#include <metro/emulator/emulator.hpp>

#include "server.hpp"

namespace metro::emulator {

struct Emulator::Impl {
  explicit Impl(EmulatorOptions o) : server(std::move(o)) {}
  Server server;
};

Emulator::Emulator(EmulatorOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Emulator::~Emulator() = default;

void Emulator::start() { impl_->server.start(); }
void Emulator::stop() { impl_->server.stop(); }
std::uint16_t Emulator::port() const { return impl_->server.port(); }
std::optional<std::uint16_t> Emulator::tls_port() const { return impl_->server.tls_port(); }
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
