#include "tls.hpp"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <proton/sasl.h>
#include <proton/sasl_plugin.h>
#include <unistd.h>

#include <atomic>
#include <ctime>
#include <functional>
#include <cstdio>
#include <cstring>
#include <memory>

#include <metro/error.hpp>

namespace metro::emulator {
namespace {

template <typename T, void (*F)(T*)>
struct Deleter {
  void operator()(T* p) const { F(p); }
};
using Key = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using Cert = std::unique_ptr<X509, Deleter<X509, X509_free>>;

void check(bool ok, const char* what) {
  if (!ok) throw Error(std::string("generating the emulator's TLS certificate failed: ") + what);
}

void add_extension(X509* cert, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  check(ext != nullptr, "extension");
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

void write_pem(const std::filesystem::path& path, const std::function<int(FILE*)>& write) {
  FILE* f = std::fopen(path.c_str(), "w");
  check(f != nullptr, "cannot open a file to write");
  int ok = write(f);
  std::fclose(f);
  check(ok == 1, "cannot write PEM");
}

// ---- SASL --------------------------------------------------------------------------------

const char kMechanisms[] = "MSSBCBS ANONYMOUS PLAIN";
const char kAnonymous[] = "anonymous";

void sasl_free(pn_transport_t* /*t*/) {}
const char* sasl_list(pn_transport_t* /*t*/) { return kMechanisms; }
bool sasl_init_server(pn_transport_t* t) {
  pnx_sasl_set_desired_state(t, SASL_POSTED_MECHANISMS);
  return true;
}
bool sasl_init_client(pn_transport_t* /*t*/) { return false; }
void sasl_prepare(pn_transport_t* /*t*/) {}
void sasl_process_init(pn_transport_t* t, const char* mechanism, const pn_bytes_t* /*recv*/) {
  if (std::strcmp(mechanism, "ANONYMOUS") == 0 || std::strcmp(mechanism, "MSSBCBS") == 0 ||
      std::strcmp(mechanism, "PLAIN") == 0) {
    // Proton keeps the pointer, so it must outlive the transport: a static string does.
    pnx_sasl_set_succeeded(t, kAnonymous, kAnonymous);
  } else {
    pnx_sasl_set_failed(t);
  }
  pnx_sasl_set_desired_state(t, SASL_POSTED_OUTCOME);
}
void sasl_process_response(pn_transport_t* /*t*/, const pn_bytes_t* /*recv*/) {}
bool sasl_process_mechanisms(pn_transport_t* /*t*/, const char* /*mechs*/) { return false; }
void sasl_process_challenge(pn_transport_t* /*t*/, const pn_bytes_t* /*recv*/) {}
void sasl_process_outcome(pn_transport_t* /*t*/, const pn_bytes_t* /*recv*/) {}
bool sasl_can_encrypt(pn_transport_t* /*t*/) { return false; }
ssize_t sasl_max_encrypt_size(pn_transport_t* /*t*/) { return 0; }
ssize_t sasl_encode(pn_transport_t* /*t*/, pn_bytes_t /*in*/, pn_bytes_t* /*out*/) { return 0; }
ssize_t sasl_decode(pn_transport_t* /*t*/, pn_bytes_t /*in*/, pn_bytes_t* /*out*/) { return 0; }

const pnx_sasl_implementation kSasl = {
    sasl_free,         sasl_list,          sasl_init_server,        sasl_init_client,
    sasl_prepare,      sasl_process_init,  sasl_process_response,   sasl_process_mechanisms,
    sasl_process_challenge, sasl_process_outcome, sasl_can_encrypt, sasl_max_encrypt_size,
    sasl_encode,       sasl_decode,
};

}  // namespace

GeneratedCertificate generate_self_signed_certificate(const std::filesystem::path& directory) {
  static std::atomic<int> counter{0};
  auto folder = directory / ("tls-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  std::filesystem::create_directories(folder);

  Key key(EVP_RSA_gen(2048));
  check(key != nullptr, "RSA key");
  Cert cert(X509_new());
  check(cert != nullptr, "X509");
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), static_cast<long>(std::time(nullptr)));
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 60L * 60 * 24 * 365);
  X509_set_pubkey(cert.get(), key.get());
  auto* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  add_extension(cert.get(), NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
  add_extension(cert.get(), NID_basic_constraints, "critical,CA:TRUE");
  add_extension(cert.get(), NID_key_usage, "critical,digitalSignature,keyEncipherment,keyCertSign");
  check(X509_sign(cert.get(), key.get(), EVP_sha256()) > 0, "signing");

  GeneratedCertificate out{folder / "emulator-cert.pem", folder / "emulator-key.pem"};
  write_pem(out.certificate, [&](FILE* f) { return PEM_write_X509(f, cert.get()); });
  write_pem(out.private_key, [&](FILE* f) {
    return PEM_write_PrivateKey(f, key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  });
  std::filesystem::permissions(out.private_key, std::filesystem::perms::owner_read |
                                                    std::filesystem::perms::owner_write);
  return out;
}

void install_sasl(pn_transport_t* transport) {
  pn_sasl_set_allow_insecure_mechs(pn_sasl(transport), true);
  pnx_sasl_set_implementation(transport, &kSasl, nullptr);
}

}  // namespace metro::emulator
