#pragma once

// Conversion between amqp::Value and Proton's pn_data_t, for the code that talks to Proton's C
// API directly (the emulator's server and the client's settlement escapes).

#include <proton/codec.h>

#include "value.hpp"

namespace metro::amqp {

/// The first value held by `data` (null when empty).
Value read_data(pn_data_t* data);
/// Replaces what `data` holds with `value`.
void write_data(pn_data_t* data, const Value& value);

}  // namespace metro::amqp
