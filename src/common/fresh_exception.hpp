#pragma once

#include <exception>

namespace metro {

// An exception_ptr to an exception built in place by `make` (a callable returning it by value).
//
// std::make_exception_ptr copies its argument, and a copy of a std::runtime_error shares the
// reference-counted message of libstdc++'s copy-on-write string with the temporary it came from.
// Handed to another thread, the two copies then release that message from two threads through
// code ThreadSanitizer cannot see. Throwing the prvalue builds the one and only exception object.
template <typename Make>
std::exception_ptr fresh_exception(Make&& make) {
  try {
    throw make();
  } catch (...) {
    return std::current_exception();
  }
}

}  // namespace metro
