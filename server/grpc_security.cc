#include "server/grpc_security.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "quant/util/status_macros.h"

namespace qaas::server {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& what, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(what, " ", path, ": cannot be read"));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string pem = ss.str();
  if (!absl::StrContains(pem, "-----BEGIN ")) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, ": not a PEM file"));
  }
  return pem;
}

class BearerTokenInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit BearerTokenInterceptor(const std::string* header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace("authorization", *header_);
    }
    methods->Proceed();
  }

 private:
  const std::string* header_;  // owned by the factory, which the channel keeps
};

class BearerTokenFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerTokenFactory(const std::string& token) : header_("Bearer " + token) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new BearerTokenInterceptor(&header_);
  }

 private:
  const std::string header_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const ServerTlsOptions& o) {
  if (o.cert_file.empty()) {
    if (!o.key_file.empty() || !o.worker_ca_file.empty()) {
      return absl::InvalidArgumentError("TLS: a key or worker CA was given without a certificate (--tls_cert)");
    }
    return grpc::InsecureServerCredentials();
  }
  if (o.key_file.empty()) return absl::InvalidArgumentError("TLS: --tls_cert needs --tls_key");
  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  QAAS_ASSIGN_OR_RETURN(auto cert, ReadPem("TLS certificate", o.cert_file));
  QAAS_ASSIGN_OR_RETURN(auto key, ReadPem("TLS key", o.key_file));
  ssl.pem_key_cert_pairs.push_back({key, cert});
  if (!o.worker_ca_file.empty()) {
    QAAS_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem("worker CA", o.worker_ca_file));
    // Tenants call without certificates; a presented one must verify.
    ssl.client_certificate_request = GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> BearerTokenInterceptors(
    const std::string& token) {
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> v;
  if (!token.empty()) v.push_back(std::make_unique<BearerTokenFactory>(token));
  return v;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                           const ClientSecurityOptions& o) {
  std::shared_ptr<grpc::ChannelCredentials> creds;
  grpc::ChannelArguments args;
  if (o.tls || !o.ca_file.empty() || !o.cert_file.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!o.ca_file.empty()) {
      QAAS_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem("TLS CA", o.ca_file));
    }
    if (!o.cert_file.empty() || !o.key_file.empty()) {
      QAAS_ASSIGN_OR_RETURN(auto cert, ReadPem("TLS client certificate", o.cert_file));
      QAAS_ASSIGN_OR_RETURN(auto key, ReadPem("TLS client key", o.key_file));
      ssl.pem_cert_chain = cert;
      ssl.pem_private_key = key;
    }
    creds = grpc::SslCredentials(ssl);
    if (!o.server_name.empty()) args.SetSslTargetNameOverride(o.server_name);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  return grpc::experimental::CreateCustomChannelWithInterceptors(target, creds, args,
                                                                 BearerTokenInterceptors(o.token));
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("token file ", path, ": cannot be read"));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string token(absl::StripAsciiWhitespace(ss.str()));
  if (token.empty()) return absl::InvalidArgumentError(absl::StrCat("token file ", path, " is empty"));
  return token;
}

absl::StatusOr<std::string> TokenFromFileOrEnvironment(const std::string& token_file) {
  if (!token_file.empty()) return ReadTokenFile(token_file);
  const char* env = std::getenv("QAAS_TOKEN");
  return std::string(env ? env : "");
}

}  // namespace qaas::server
