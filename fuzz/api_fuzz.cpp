// The admin API's routes from arbitrary requests, without sockets: Api::handle on a real service
// (an in-process emulator, a SQLite ledger with parked messages). The input is
//
//   METHOD SP TARGET LF (NAME ":" VALUE LF)* LF BODY
//
// What must hold for every request: no crash and no exception; an answer with a known status;
// every error is {"error": "<text>", "status": <that status>}; every JSON answer is within
// json_bounds; and without one of the tokens nothing under /api or /metrics succeeds.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <string_view>
#include <thread>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include <metro/config/config.hpp>
#include <metro/dispatch/service.hpp>
#include <metro/emulator/emulator.hpp>
#include <metro/sb/client.hpp>

#include "../src/common/json_bounds.hpp"
#include "api.hpp"

namespace {

constexpr const char* kAdmin = "fuzz-admin";
constexpr const char* kViewer = "fuzz-viewer";

struct Fixture {
  Fixture() {
    metro::emulator::EmulatorOptions options;
    options.port = 0;
    metro::emulator::TopicOptions orders{"orders", {}, {}};
    orders.subscriptions.push_back({"billing", {}, {}});
    options.bus.topics.push_back(orders);
    bus = std::make_unique<metro::emulator::Emulator>(options);
    bus->start();
    auto ledger = std::filesystem::temp_directory_path() /
                  ("metro-fuzz-api-" + std::to_string(::getpid()) + ".db");
    std::filesystem::remove(ledger);
    auto text = "[metro]\nworkers = 2\nledger = \"sqlite://" + ledger.string() +
                "\"\n[[subscriptions]]\ntopic_name = \"orders\"\nsubscription_name = "
                "\"billing\"\nconnection_string = \"" +
                bus->connection_string() +
                "\"\n[[subscriptions.handlers]]\nsubject = \"Orders/**\"\nglob = true\n"
                "handler = \"fails\"\nmax_attempts = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n"
                "tokens = [{ name = \"ops\", token = \"" +
                std::string(kAdmin) + "\", role = \"admin\" }, { name = \"wall\", token = \"" +
                kViewer + "\", role = \"viewer\" }]\n";
    auto config = metro::config::parse_config(text, "fuzz.toml");
    metro::dispatch::ServiceOptions service_options;
    service_options.functions = {
        {"fails", [](const metro::dispatch::Task&) { throw std::runtime_error("fuzzed"); }}};
    service = std::make_unique<metro::dispatch::Service>(config, service_options);
    service->start();
    metro::admin::Limits limits;
    limits.action_deadline = std::chrono::seconds(2);
    api = std::make_unique<metro::admin::Api>(*service, config.admin, limits);
    // A few parked messages for the routes that name one.
    metro::sb::Client client(bus->connection_string());
    auto sender = client.create_sender("orders");
    for (int i = 0; i < 8; ++i) {
      metro::sb::Message m;
      m.body = R"({"subject":"Orders/Created","n":)" + std::to_string(i) + "}";
      m.correlation_id = "order-" + std::to_string(i);
      sender.send(m);
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < deadline &&
           service->ledger().counts()[metro::ledger::State::kFailed] < 8) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  std::unique_ptr<metro::emulator::Emulator> bus;
  std::unique_ptr<metro::dispatch::Service> service;
  std::unique_ptr<metro::admin::Api> api;
};

// Reachable for the whole run (the service's threads use it), never torn down.
Fixture* fixture = nullptr;

metro::admin::Request parse(std::string_view text) {
  metro::admin::Request r;
  auto line_end = text.find('\n');
  auto line = text.substr(0, line_end);
  auto space = line.find(' ');
  r.method = std::string(line.substr(0, space));
  r.target = space == std::string_view::npos ? "/" : std::string(line.substr(space + 1));
  text = line_end == std::string_view::npos ? std::string_view() : text.substr(line_end + 1);
  while (!text.empty() && text.front() != '\n') {
    line_end = text.find('\n');
    line = text.substr(0, line_end);
    auto colon = line.find(':');
    r.headers.emplace_back(
        std::string(line.substr(0, colon)),
        colon == std::string_view::npos ? "" : std::string(line.substr(colon + 1)));
    text = line_end == std::string_view::npos ? std::string_view() : text.substr(line_end + 1);
  }
  if (!text.empty()) r.body = std::string(text.substr(1));
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (fixture == nullptr) fixture = new Fixture();
  auto request = parse(std::string_view(reinterpret_cast<const char*>(data), size));
  auto response = fixture->api->handle(request);

  static const std::set<int> kStatuses = {200, 202, 400, 401, 403, 404, 405, 409, 500, 502, 503};
  if (kStatuses.count(response.status) == 0) std::abort();
  if (response.status == 500) std::abort();  // An exception metro did not expect.
  if (response.content_type == "application/json") {
    if (metro::json_bounds::check(response.body)) std::abort();
    auto body = nlohmann::json::parse(response.body, nullptr, false);
    if (body.is_discarded()) std::abort();
    if (response.status >= 400 && response.status != 503) {
      if (!body.is_object() || !body["error"].is_string() || body["status"] != response.status) {
        std::abort();
      }
    }
  }
  auto authorization = request.header("Authorization");
  bool token = authorization == std::string("Bearer ") + kAdmin ||
               authorization == std::string("Bearer ") + kViewer;
  auto path = request.target.substr(0, request.target.find('?'));
  bool open = path == "/" || path == "/healthz" || path == "/readyz";
  if (!token && !open && response.status < 300) std::abort();  // Read or acted without a token.
  return 0;
}
