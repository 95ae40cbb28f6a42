// Transport security and credentials for both ends of qaas's gRPC:
// TLS (and, for workers, client certificates) from PEM files, and a channel
// that sends a bearer token with every call.
//
// The token rides in call metadata added by a client interceptor, so it works
// over TLS and over plaintext alike; plaintext is for loopback and in-process
// channels only (docs/api.md "Authentication").
#ifndef QAAS_SERVER_GRPC_SECURITY_H_
#define QAAS_SERVER_GRPC_SECURITY_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/client_interceptor.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace qaas::server {

struct ServerTlsOptions {
  std::string cert_file;  // PEM certificate chain; "" = plaintext
  std::string key_file;   // PEM private key
  // PEM CA that signs worker client certificates. When set, clients may
  // present a certificate; one this CA verified identifies a worker (mTLS).
  std::string worker_ca_file;
};

// Insecure credentials when cert_file is empty. InvalidArgument naming the
// file when one is missing, unreadable or not PEM.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const ServerTlsOptions& options);

struct ClientSecurityOptions {
  std::string token;        // sent as 'authorization: Bearer <token>' ("" = none)
  bool tls = false;         // TLS with the system roots unless ca_file is set
  std::string ca_file;      // PEM roots to trust (implies tls)
  std::string cert_file;    // PEM client certificate for mTLS (implies tls)
  std::string key_file;
  std::string server_name;  // TLS name to verify instead of the target's host ("" = the host)
};

// A channel to `target` with `options`. InvalidArgument naming an unreadable
// PEM file.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                           const ClientSecurityOptions& options);

// The interceptor that adds the bearer token (for channels made elsewhere,
// such as the server's in-process channel).
std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> BearerTokenInterceptors(
    const std::string& token);

// A token from a file (a mounted Secret): its content without surrounding
// whitespace. InvalidArgument when the file is empty.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);
// The clients' rule: the token in `token_file` when given, else $QAAS_TOKEN,
// else none ("").
absl::StatusOr<std::string> TokenFromFileOrEnvironment(const std::string& token_file);

}  // namespace qaas::server

#endif  // QAAS_SERVER_GRPC_SECURITY_H_
