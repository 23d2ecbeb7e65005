// A program with a C++ handler: the original's `my_func`, completing its message explicitly.
//
//   build/ci/bin/metro-example-app run --config examples/my-app.toml --emulator
//
// It is the whole `metro` command line (run, check, emulator, publish) plus this handler.

#include <iostream>

#include <metro/app.hpp>

int main(int argc, char** argv) {
  metro::App app;
  app.handle("my_func", [](metro::Task& task) {
    std::cout << "my_func: " << task.subject << " #" << task.sequence_number << ": "
              << task.message.value("joke", task.message.dump()) << std::endl;
    // `completion = "explicit"` in the config: the handler says when the message is done, as the
    // original asked its users to (there is also complete_deferred_message_async).
    metro::complete_deferred_message(task.sequence_number, task.topic_name, task.subscription_name);
  });
  return app.main(argc, argv);
}
