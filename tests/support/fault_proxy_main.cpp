// metro_fault_proxy: the fault proxy as a process, for tests that drive real binaries.
//
//   metro_fault_proxy --target HOST:PORT
//
// Prints `listening 127.0.0.1:PORT`, then reads one command a line on stdin and answers each
// with one line on stdout:
//   cut          close every connection with a reset          -> ok
//   stall        stop forwarding, keep the sockets open        -> ok
//   resume       forward again                                 -> ok
//   slow MS      delay every chunk by MS milliseconds          -> ok
//   status       -> ok open=N accepted=M
// Anything else gets `error: …`. It exits when stdin closes.

#include <iostream>
#include <sstream>
#include <string>

#include "fault_proxy.hpp"

int main(int argc, char** argv) {
  std::string target;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--target") target = argv[i + 1];
  }
  auto colon = target.rfind(':');
  if (colon == std::string::npos) {
    std::cerr << "usage: metro_fault_proxy --target HOST:PORT\n";
    return 2;
  }
  try {
    metro::test::FaultProxy proxy(target.substr(0, colon),
                                  static_cast<std::uint16_t>(std::stoi(target.substr(colon + 1))));
    std::cout << "listening 127.0.0.1:" << proxy.port() << std::endl;
    std::string line;
    while (std::getline(std::cin, line)) {
      std::istringstream words(line);
      std::string command;
      words >> command;
      if (command == "cut") {
        proxy.cut();
      } else if (command == "stall") {
        proxy.stall();
      } else if (command == "resume") {
        proxy.resume();
      } else if (command == "slow") {
        long ms = -1;
        words >> ms;
        if (ms < 0) {
          std::cout << "error: slow takes a delay in milliseconds" << std::endl;
          continue;
        }
        proxy.slow(std::chrono::milliseconds(ms));
      } else if (command == "status") {
        std::cout << "ok open=" << proxy.open_connections() << " accepted=" << proxy.accepted()
                  << std::endl;
        continue;
      } else if (command.empty()) {
        continue;
      } else {
        std::cout << "error: unknown command (cut, stall, resume, slow MS, status)" << std::endl;
        continue;
      }
      std::cout << "ok" << std::endl;
    }
  } catch (const std::exception& e) {
    std::cerr << "metro_fault_proxy: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
