#pragma once

/// `metro::App`: a program with C++ handlers. Register functions by the names the config uses,
/// then hand `main` over: the program is the whole `metro` command (`run`, `check`, `emulator`,
/// `publish`), with those functions available to `handler = "name"` entries.
///
/// ```cpp
/// int main(int argc, char** argv) {
///   metro::App app;
///   app.handle("my_func", [](metro::Task& task) {
///     std::cout << task.message["joke"] << '\n';
///     metro::complete_deferred_message(task.sequence_number, task.topic_name,
///                                      task.subscription_name);
///   });
///   return app.main(argc, argv);
/// }
/// ```
///
/// Thread-safety: register handlers before `main`; a handler runs on many worker threads at once.

#include <functional>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include <metro/dispatch/service.hpp>

namespace metro {

/// What a C++ handler gets: the task (topic_name, subscription_name, sequence_number, subject,
/// correlation_id, attempt, body …) and the decoded JSON body as `message`.
struct Task : dispatch::Task {
  nlohmann::json message;
};

/// Throw from a handler to be run again later, by the handler's retry policy.
using RetryLater = dispatch::RetryLater;

class App {
 public:
  /// Registers `function` as the handler `name`. Returning is success; `RetryLater` asks to be
  /// run again; any other exception is a failed attempt with its message as the error.
  App& handle(std::string name, std::function<void(Task&)> function);
  /// Runs the `metro` command line with these handlers; returns the process exit code.
  int main(int argc, char** argv);

  /// The registered handlers in the form `dispatch::Service` takes.
  const std::map<std::string, dispatch::Function>& functions() const { return functions_; }

 private:
  std::map<std::string, dispatch::Function> functions_;
};

}  // namespace metro
