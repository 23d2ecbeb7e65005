#pragma once

// Transport security for the emulator's listeners: a self-signed certificate when none is given,
// and a SASL layer that offers the mechanisms the SDKs ask for (ANONYMOUS, PLAIN, MSSBCBS).

#include <proton/transport.h>

#include <filesystem>

namespace metro::emulator {

struct GeneratedCertificate {
  std::filesystem::path certificate;  ///< PEM, CN=localhost, SAN DNS:localhost, IP:127.0.0.1
  std::filesystem::path private_key;  ///< PEM, RSA 2048
};

/// Writes a new self-signed certificate and key into a fresh folder under `directory`.
/// Throws `metro::Error` when OpenSSL or the file system fails.
GeneratedCertificate generate_self_signed_certificate(const std::filesystem::path& directory);

/// Replaces Proton's built-in SASL on a server transport: it offers ANONYMOUS, PLAIN and
/// MSSBCBS (the .NET and uamqp clients' mechanism) and accepts any of them. Authorisation is
/// CBS's job, as on Service Bus.
void install_sasl(pn_transport_t* transport);

}  // namespace metro::emulator
