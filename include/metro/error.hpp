#pragma once

/// The root of every exception metro throws. Catch `metro::Error` for all of them, or a
/// subclass for one category. Thread-safety: exception objects are immutable after construction.

#include <stdexcept>
#include <string>

namespace metro {

/// Base of all metro errors. `is_transient()` says whether trying the same thing again later can
/// succeed (a dropped connection, a timeout) or not (a bad key, an unknown entity, bad input).
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, bool transient = false)
      : std::runtime_error(what), transient_(transient) {}

  /// True when retrying the operation may succeed without anything else changing.
  bool is_transient() const noexcept { return transient_; }

 private:
  bool transient_;
};

/// Input that does not have the expected form: a connection string, a token, a request.
class InvalidArgument : public Error {
 public:
  explicit InvalidArgument(const std::string& what) : Error(what, false) {}
};

}  // namespace metro
