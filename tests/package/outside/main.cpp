// A program outside metro's source tree, built against an installed metro (find_package(metro)):
// the Service Bus client sends to and receives from an emulator it hosts, then metro::App runs
// the program's own C++ handler on messages of that emulator and stops once it has handled them.
//
//   my_metro_app APP_CONFIG      (the config's connection string is ${MY_APP_CONNECTION_STRING})

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <string>

#include <pthread.h>
#include <unistd.h>

#include <metro/app.hpp>
#include <metro/emulator/emulator.hpp>
#include <metro/sb/client.hpp>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: my_metro_app APP_CONFIG\n";
    return 2;
  }
  constexpr int kMessages = 3;
  // metro::App::main waits for SIGINT/SIGTERM: block them before any thread starts, so that they
  // reach that wait whichever thread they are sent to.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  metro::emulator::EmulatorOptions bus_options;
  bus_options.port = 0;
  bus_options.bus.topics.push_back({"orders", {}, {{"billing", {}, {}}, {"audit", {}, {}}}});
  metro::emulator::Emulator bus(bus_options);
  bus.start();

  // The client: send, receive and complete on the `audit` subscription.
  metro::sb::Client client(bus.connection_string());
  auto sender = client.create_sender("orders");
  for (int i = 1; i <= kMessages; ++i) {
    metro::sb::Message order;
    order.body = R"({"subject":"Orders/Created","id":)" + std::to_string(i) + "}";
    order.subject = "Orders/Created";
    sender.send(order);
  }
  auto receiver = client.create_receiver("orders/Subscriptions/audit");
  int received = 0;
  for (int round = 0; round < 10 && received < kMessages; ++round) {
    for (auto& message : receiver.receive(kMessages, std::chrono::seconds(5))) {
      receiver.complete(message);
      ++received;
    }
  }
  std::cout << "client: received " << received << " messages" << std::endl;
  if (received != kMessages) return 1;

  // metro::App: the `billing` subscription's messages go to this program's handler, which stops
  // the service with SIGTERM once it has seen them all.
  setenv("MY_APP_CONNECTION_STRING", bus.connection_string().c_str(), 1);
  static std::atomic<int> handled{0};
  metro::App app;
  app.handle("bill", [](metro::Task& task) {
    std::cout << "bill: " << task.subject << " #" << task.sequence_number << " id "
              << task.message["id"] << std::endl;
    if (++handled == kMessages) kill(getpid(), SIGTERM);
  });
  std::string run = "run", config_flag = "--config";
  char* app_argv[] = {argv[0], run.data(), config_flag.data(), argv[1], nullptr};
  int status = app.main(4, app_argv);
  std::cout << "app: handled " << handled << " messages, exit " << status << std::endl;
  return status == 0 && handled == kMessages ? 0 : 1;
}
