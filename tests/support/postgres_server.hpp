#pragma once

// A real PostgreSQL server for tests: Debian's postgresql-15 binaries, a fresh cluster in a
// temporary directory on a free loopback port, torn down with the object. As root the cluster
// runs as the `postgres` user (PostgreSQL refuses to run as root). Every wait has a deadline.

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "test_support.hpp"

namespace metro::test {

class PostgresServer {
 public:
  /// Where Debian installs the server binaries.
  static std::string bin_dir() {
    for (const char* v : {"17", "16", "15"}) {
      std::string dir = std::string("/usr/lib/postgresql/") + v + "/bin";
      if (std::filesystem::exists(dir + "/pg_ctl")) return dir;
    }
    return {};
  }
  static bool available() { return !bin_dir().empty(); }

  PostgresServer() {
    bin_ = bin_dir();
    if (bin_.empty()) throw std::runtime_error("PostgreSQL is not installed (script/bootstrap)");
    char pattern[] = "/tmp/metro-pg-XXXXXX";
    if (mkdtemp(pattern) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir_ = pattern;
    as_user_ = geteuid() == 0 ? "runuser -u postgres -- " : "";
    if (geteuid() == 0) run_checked("chown postgres:postgres " + dir_);
    run_checked(as_user_ + bin_ + "/initdb -D " + dir_ + "/data -U metro --auth=trust" +
                " --no-sync -E UTF8 --locale=C.UTF-8");
    // Password authentication on TCP so tests can check a wrong password; trust on the socket.
    run_checked("sh -c \"printf 'local all all trust\\nhost all all 127.0.0.1/32 "
                "scram-sha-256\\n' > " + dir_ + "/data/pg_hba.conf\"");
    if (geteuid() == 0) run_checked("chown postgres:postgres " + dir_ + "/data/pg_hba.conf");
    start();
    run_checked(bin_ + "/psql -h " + dir_ + " -p " + std::to_string(port_) +
                " -U metro -d postgres -qc \"ALTER USER metro PASSWORD '" + password() + "'\"");
  }
  ~PostgresServer() {
    stop();
    run_command("rm -rf " + dir_);
  }
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  static std::string password() { return "metro-test-pw"; }
  int port() const { return port_; }
  /// `postgresql://metro:…@127.0.0.1:port/db`.
  std::string url(const std::string& database = "postgres") const {
    return "postgresql://metro:" + password() + "@127.0.0.1:" + std::to_string(port_) + "/" +
           database;
  }
  /// Creates a database (a fresh one per test keeps tests apart).
  void create_database(const std::string& name) const {
    run_checked(bin_ + "/psql -h " + dir_ + " -p " + std::to_string(port_) +
                " -U metro -d postgres -qc 'CREATE DATABASE \"" + name + "\"'");
  }
  /// Runs SQL through psql on the socket; its output (unaligned, tuples only).
  std::string sql(const std::string& database, const std::string& statement) const {
    auto [code, out] = run_command(bin_ + "/psql -h " + dir_ + " -p " + std::to_string(port_) +
                                   " -U metro -d " + database + " -Atqc \"" + statement + "\"");
    if (code != 0) throw std::runtime_error("psql: " + out);
    return out;
  }

  /// Starts the server (again) on its port; returns when it accepts connections. The first start
  /// takes a free port, and another one if something else bound it meanwhile.
  void start() {
    const bool first = port_ == 0;
    for (int attempt = 1;; ++attempt) {
      if (first) port_ = free_port();
      auto [code, out] = run_command(as_user_ + bin_ + "/pg_ctl -D " + dir_ + "/data -l " +
                                     dir_ + "/log -w -t 60 -o \"-p " + std::to_string(port_) +
                                     " -k " + dir_ + " -c listen_addresses=127.0.0.1" +
                                     " -c fsync=off -c max_connections=200\" start");
      if (code == 0) break;
      if (!first || attempt == 3) {
        throw std::runtime_error("pg_ctl start failed: " + out + log_tail());
      }
    }
    running_ = true;
    bool ready = wait_until(
        [&] {
          return run_command(bin_ + "/pg_isready -q -h 127.0.0.1 -p " + std::to_string(port_))
                     .first == 0;
        },
        std::chrono::seconds(60));
    if (!ready) throw std::runtime_error("PostgreSQL did not become ready" + log_tail());
  }
  /// Stops it at once (connections are cut, as in a crash of the server).
  void stop() {
    if (!running_) return;
    run_command(as_user_ + bin_ + "/pg_ctl -D " + dir_ + "/data -m immediate -w -t 60 stop");
    running_ = false;
  }
  void restart() {
    stop();
    start();
  }

 private:
  static int free_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof(addr);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ::close(fd);
      throw std::runtime_error("cannot find a free port");
    }
    ::close(fd);
    return ntohs(addr.sin_port);
  }
  void run_checked(const std::string& command) const {
    auto [code, out] = run_command(command);
    if (code != 0) throw std::runtime_error(command + " failed: " + out);
  }
  std::string log_tail() const { return "\n" + run_command("tail -20 " + dir_ + "/log").second; }

  std::string bin_;
  std::string dir_;
  std::string as_user_;
  int port_ = 0;
  bool running_ = false;
};

}  // namespace metro::test
