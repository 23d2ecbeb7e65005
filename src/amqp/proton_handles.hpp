#pragma once

// Owners for the Proton C handles the client and the emulator create themselves, so that every
// path out of a constructor or start() frees them exactly once. (Connections, transports and
// listeners handed to a proactor belong to it and are freed with it.)

#include <memory>

#include <proton/proactor.h>
#include <proton/ssl.h>

namespace metro::amqp {

struct ProactorFree {
  void operator()(pn_proactor_t* proactor) const { pn_proactor_free(proactor); }
};
/// Freeing a proactor closes and frees what it still owns: join its thread first.
using ProactorPtr = std::unique_ptr<pn_proactor_t, ProactorFree>;

struct SslDomainFree {
  void operator()(pn_ssl_domain_t* domain) const { pn_ssl_domain_free(domain); }
};
using SslDomainPtr = std::unique_ptr<pn_ssl_domain_t, SslDomainFree>;

}  // namespace metro::amqp
