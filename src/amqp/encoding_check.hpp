#pragma once

// Checks an AMQP encoding before Proton decodes it: every constructor, size and count against
// the bytes there are, and nesting against kMaxDepth, in one pass that never recurses.

#include <cstddef>
#include <string_view>

#include "value.hpp"

namespace metro::amqp {

/// The length of the one value at the start of `bytes`, walked the way Proton's decoder will.
/// Throws DecodeError when it is cut short, names an unknown type, or nests too deep.
std::size_t check_encoding(std::string_view bytes);

}  // namespace metro::amqp
