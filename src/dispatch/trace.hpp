#pragma once

// W3C trace context (https://www.w3.org/TR/trace-context/) for the messages metro handles: read
// from a message's `traceparent` application property (or `Diagnostic-Id`, which the Azure SDKs
// write in the same format), validated, and continued with a span of metro's own; a message
// without a valid one starts a new trace. Only values that passed validation (or that metro made)
// are ever stored, logged or passed on. Thread-safety: reentrant.

#include <map>
#include <optional>
#include <string>
#include <string_view>

#include <metro/sb/client.hpp>

namespace metro::dispatch {

/// `value` as a version-00 traceparent (`00-<32 hex>-<16 hex>-<2 hex>`, lowercase), or nullopt
/// when it is not a valid one: wrong length or separators, upper-case or non-hex digits, an
/// all-zero trace or parent id, version `ff`. A later version's value is read as version 00 when
/// its first 55 characters have that shape and a `-` or nothing follows (as the spec asks).
std::optional<std::string> parse_traceparent(std::string_view value);

/// A new trace: random trace and span ids, sampled (`-01`).
std::string new_traceparent();

/// The same trace and flags with a new span id: metro's span under the caller's.
std::string child_of(std::string_view traceparent);

/// The trace id (32 hex digits) of a valid traceparent; empty otherwise.
std::string trace_id_of(std::string_view traceparent);

/// The traceparent metro handles a received message under: a child of the message's
/// `traceparent` (else `Diagnostic-Id`) application property when it is valid (names compared
/// without regard to case), else a new trace.
std::string trace_context_of(const std::map<std::string, sb::PropertyValue>& properties);

/// ` trace=<trace id>` for a log line, or empty.
std::string trace_suffix(std::string_view traceparent);

}  // namespace metro::dispatch
