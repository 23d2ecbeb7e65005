// The C++ client through a fault proxy in front of the in-process emulator: connections cut,
// stalled past the idle timeout, and slowed. What must hold: the client notices, says so once
// (log and on_state_change) with the reason, comes back by itself, and loses no message.
#include <atomic>
#include <mutex>
#include <set>
#include <thread>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <metro/emulator/emulator.hpp>
#include <metro/sb/client.hpp>

#include "../support/fault_proxy.hpp"
#include "../support/test_support.hpp"

namespace metro::sb {
namespace {

using namespace std::chrono_literals;

/// Records the log lines and the state changes a client reports.
class Observed {
 public:
  Observed() : sink_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(1000)) {
    spdlog::default_logger()->sinks().push_back(sink_);
  }
  ~Observed() {
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
  }

  std::function<void(ConnectionState, const std::string&)> callback() {
    return [this](ConnectionState s, const std::string& why) {
      std::lock_guard lock(mutex_);
      changes_.emplace_back(s, why);
    };
  }
  std::vector<std::pair<ConnectionState, std::string>> changes() {
    std::lock_guard lock(mutex_);
    return changes_;
  }
  std::size_t count(ConnectionState s) {
    std::size_t n = 0;
    for (const auto& [state, why] : changes()) n += state == s ? 1 : 0;
    return n;
  }
  /// Log lines containing `text`.
  std::size_t lines_with(const std::string& text) {
    std::size_t n = 0;
    for (const auto& line : sink_->last_formatted()) n += line.find(text) != std::string::npos;
    return n;
  }

 private:
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
  std::mutex mutex_;
  std::vector<std::pair<ConnectionState, std::string>> changes_;
};

class ClientFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    emulator::EmulatorOptions o;
    o.port = 0;
    emulator::EntityOptions lock;
    lock.lock_duration = 60s;  // longer than every test: a redelivery is a release, not expiry
    o.bus.queues.push_back({"q", lock});
    bus_.emplace(o);
    bus_->start();
    proxy_.emplace("127.0.0.1", bus_->port());
  }

  /// The emulator's connection string, through the proxy.
  std::string through_proxy() const {
    return "Endpoint=sb://localhost:" + std::to_string(proxy_->port()) +
           ";SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
           "UseDevelopmentEmulator=true";
  }

  ClientOptions options(Observed& observed) {
    ClientOptions o;
    o.operation_timeout = 5s;
    o.reconnect_initial_backoff = 50ms;
    o.reconnect_max_backoff = 500ms;
    o.on_state_change = observed.callback();
    return o;
  }

  static Message text(std::string body) {
    Message m;
    m.body = std::move(body);
    return m;
  }

  /// Receives until `expected` different bodies were seen (completing each) and the queue is
  /// empty, or 30 s pass.
  std::set<std::string> drain(Receiver& receiver, std::size_t expected) {
    std::set<std::string> seen;
    test::wait_until(
        [&] {
          std::vector<ReceivedMessage> got;
          try {
            got = receiver.receive(expected, 500ms);
          } catch (const Error&) {
            return false;  // reconnecting
          }
          for (auto& m : got) {
            seen.insert(m.body);
            try {
              receiver.complete(m);
            } catch (const LockLostError&) {
              // received before the fault: it is delivered again
            }
          }
          return seen.size() >= expected && bus_->counts("q").total() == 0;
        },
        30s);
    return seen;
  }

  std::optional<emulator::Emulator> bus_;
  std::optional<test::FaultProxy> proxy_;
};

TEST_F(ClientFaults, ACutConnectionComesBackAndIsReportedOnce) {
  Observed observed;
  Client client(through_proxy(), options(observed));
  auto sender = client.create_sender("q");
  auto receiver = client.create_receiver("q");
  sender.send(text("before"));
  auto held = receiver.receive(1, 5s).at(0);

  proxy_->cut();
  ASSERT_TRUE(
      test::wait_until([&] { return observed.count(ConnectionState::kDisconnected) == 1; }, 10s));
  ASSERT_TRUE(test::wait_until([&] { return client.state() == ConnectionState::kConnected; }, 10s));
  // The lock of a message received before the cut is gone: a clear error, and it comes again.
  EXPECT_THROW(receiver.complete(held), LockLostError);
  sender.send(text("after"));
  EXPECT_EQ(drain(receiver, 2), (std::set<std::string>{"before", "after"}));

  EXPECT_EQ(observed.count(ConnectionState::kDisconnected), 1u);
  EXPECT_EQ(observed.count(ConnectionState::kConnected), 2u);
  EXPECT_EQ(observed.lines_with("lost:"), 1u);
  EXPECT_EQ(observed.lines_with("again after"), 1u);
}

TEST_F(ClientFaults, AStallPastTheIdleTimeoutIsNoticedAndRecoveredWithNothingLost) {
  Observed observed;
  auto o = options(observed);
  o.idle_timeout = 1s;
  Client client(through_proxy(), o);
  auto sender = client.create_sender("q");
  auto receiver = client.create_receiver("q");
  sender.send(std::vector<Message>{text("1"), text("2"), text("3")});
  auto held = receiver.receive(3, 5s);  // held, unsettled, across the stall

  // Idle is not silent: the emulator's heartbeats keep a quiet connection up.
  std::this_thread::sleep_for(2500ms);
  EXPECT_EQ(observed.count(ConnectionState::kDisconnected), 0u);

  proxy_->stall();
  ASSERT_TRUE(
      test::wait_until([&] { return observed.count(ConnectionState::kDisconnected) == 1; }, 10s));
  auto changes = observed.changes();
  EXPECT_NE(changes.back().second.find("no frame from the peer for"), std::string::npos)
      << changes.back().second;
  // Sending while the namespace is frozen fails clearly; nothing is taken for sent.
  EXPECT_THROW(sender.send(text("during")), Error);
  // Reconnecting into the stall (TCP up, nothing flowing) does not flap: still one change.
  std::this_thread::sleep_for(2s);
  EXPECT_EQ(observed.count(ConnectionState::kDisconnected), 1u);

  proxy_->resume();
  ASSERT_TRUE(test::wait_until([&] { return client.state() == ConnectionState::kConnected; }, 10s));
  sender.send(text("4"));
  EXPECT_EQ(drain(receiver, 4), (std::set<std::string>{"1", "2", "3", "4"}));
  EXPECT_EQ(observed.count(ConnectionState::kDisconnected), 1u);
  EXPECT_EQ(observed.lines_with("lost: no frame from the peer for"), 1u);
  EXPECT_EQ(observed.lines_with("again after"), 1u);
}

TEST_F(ClientFaults, ARequestOutlivingItsDeadlineWithNothingHeardDropsTheConnection) {
  Observed observed;
  auto o = options(observed);
  o.idle_timeout = 60s;  // long: the unanswered request is what tells
  o.operation_timeout = 1s;
  Client client(through_proxy(), o);
  auto sender = client.create_sender("q");
  proxy_->stall();
  auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(sender.send(text("unanswered")), TimeoutError);
  ASSERT_TRUE(
      test::wait_until([&] { return observed.count(ConnectionState::kDisconnected) == 1; }, 10s));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
  EXPECT_NE(observed.changes().back().second.find("got no answer"), std::string::npos)
      << observed.changes().back().second;
  proxy_->resume();
  ASSERT_TRUE(test::wait_until([&] { return client.state() == ConnectionState::kConnected; }, 10s));
  sender.send(text("answered"));
}

TEST_F(ClientFaults, ASlowLinkStillWorks) {
  Observed observed;
  proxy_->slow(50ms);
  Client client(through_proxy(), options(observed));
  auto sender = client.create_sender("q");
  auto receiver = client.create_receiver("q", {ReceiveMode::kPeekLock, 10});
  std::vector<Message> batch;
  std::set<std::string> bodies;
  for (int i = 0; i < 20; ++i) {
    batch.push_back(text(std::to_string(i)));
    bodies.insert(std::to_string(i));
  }
  sender.send(batch);
  EXPECT_EQ(drain(receiver, 20), bodies);
  EXPECT_EQ(observed.count(ConnectionState::kDisconnected), 0u);
}

/// `metro_fault_proxy` as a process, driven over its stdin as an end-to-end test would.
class ProxyProcess {
 public:
  explicit ProxyProcess(std::uint16_t target) {
    int in[2];
    int out[2];
    if (pipe(in) != 0 || pipe(out) != 0) throw std::runtime_error("pipe");
    pid_ = fork();
    if (pid_ == 0) {
      dup2(in[0], 0);
      dup2(out[1], 1);
      close(in[1]);
      close(out[0]);
      auto where = "127.0.0.1:" + std::to_string(target);
      execl(METRO_FAULT_PROXY, "metro_fault_proxy", "--target", where.c_str(), nullptr);
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    to_ = in[1];
    from_ = out[0];
    auto line = read_line();
    port_ = static_cast<std::uint16_t>(std::stoi(line.substr(line.rfind(':') + 1)));
  }
  ~ProxyProcess() {
    close(to_);  // it exits when its stdin closes
    int status = 0;
    waitpid(pid_, &status, 0);
    close(from_);
  }
  std::uint16_t port() const { return port_; }
  /// Sends a command and returns the answer line.
  std::string command(const std::string& text) {
    auto line = text + "\n";
    if (write(to_, line.data(), line.size()) != static_cast<ssize_t>(line.size())) return {};
    return read_line();
  }

 private:
  std::string read_line() {
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (buffer_.find('\n') == std::string::npos) {
      if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("no answer");
      pollfd p{from_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char chunk[256];
      auto n = read(from_, chunk, sizeof(chunk));
      if (n <= 0) throw std::runtime_error("the proxy exited");
      buffer_.append(chunk, static_cast<std::size_t>(n));
    }
    auto newline = buffer_.find('\n');
    auto line = buffer_.substr(0, newline);
    buffer_.erase(0, newline + 1);
    return line;
  }
  pid_t pid_ = -1;
  int to_ = -1;
  int from_ = -1;
  std::uint16_t port_ = 0;
  std::string buffer_;
};

TEST_F(ClientFaults, TheProxyAsAProcessTakesCommandsOnStdin) {
  ProxyProcess proxy(bus_->port());
  Observed observed;
  Client client("Endpoint=sb://localhost:" + std::to_string(proxy.port()) +
                    ";SharedAccessKeyName=RootManageSharedAccessKey;"
                    "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true",
                options(observed));
  auto sender = client.create_sender("q");
  EXPECT_EQ(proxy.command("status").rfind("ok open=1 accepted=1", 0), 0u);
  EXPECT_EQ(proxy.command("cut"), "ok");
  ASSERT_TRUE(
      test::wait_until([&] { return observed.count(ConnectionState::kConnected) == 2; }, 10s));
  EXPECT_EQ(proxy.command("slow 20"), "ok");
  sender.send(text("slowly"));
  EXPECT_EQ(proxy.command("resume"), "ok");
  EXPECT_EQ(proxy.command("stall"), "ok");
  EXPECT_EQ(proxy.command("resume"), "ok");
  EXPECT_EQ(proxy.command("fly").rfind("error:", 0), 0u);
  sender.send(text("again"));
  EXPECT_EQ(bus_->counts("q").active, 2u);
}

}  // namespace
}  // namespace metro::sb
