// Bearer-token authentication: who is calling, from the `authorization`
// header, against a table of SHA-256 token hashes.
//
// Tokens file (docs/api.md "Authentication"); one token per line:
//
//   # sha256 of the token (hex)                                      principal
//   2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae tenant:acme
//   fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9 worker:gpu-pool
//
// Only hashes are stored: a leaked file does not leak a credential. Tokens
// are random (`qaasctl token` makes 256-bit ones), so an unsalted hash is
// enough. The path may also be a directory, as Kubernetes mounts a Secret:
// every file in it not starting with '.' is read. Reload() re-reads it, so a
// rotated Secret takes effect without a restart.
#ifndef QAAS_SERVER_AUTH_H_
#define QAAS_SERVER_AUTH_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace qaas::server {

struct Principal {
  enum class Kind { kTenant, kWorker };
  Kind kind = Kind::kTenant;
  std::string name;  // the tenant, or the worker credential's name
};

// "tenant:acme" / "worker" / "worker:pool-a". InvalidArgument otherwise.
absl::StatusOr<Principal> ParsePrincipal(absl::string_view text);
std::string PrincipalString(const Principal& p);

class TokenAuthenticator {
 public:
  // Reads the tokens file or directory. InvalidArgument naming the file and
  // line for a malformed line or a token listed twice; NotFound when the path
  // does not exist; an empty table is InvalidArgument too (it would lock
  // everyone out, which is never what was meant).
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> Load(const std::string& path);
  // An authenticator with no file, only AddToken()'s entries.
  static std::unique_ptr<TokenAuthenticator> InMemory();

  // Re-reads the file; on error keeps the current table and returns the
  // error. True in *changed when the table changed. Thread-safe.
  absl::Status Reload(bool* changed = nullptr);
  // A token kept across reloads (the embedded worker's). Thread-safe.
  void AddToken(const std::string& token, const Principal& principal);

  // The caller named by an `authorization` header value ("Bearer <token>").
  // Unauthenticated when the header is missing or malformed, or the token is
  // unknown (the message never repeats the token). Thread-safe.
  absl::StatusOr<Principal> Authenticate(absl::string_view authorization) const;

  size_t size() const;

 private:
  using Table = std::map<std::string, Principal>;  // sha256 hex -> principal
  static absl::StatusOr<Table> ReadTable(const std::string& path);

  std::string path_;
  mutable std::mutex mu_;
  Table table_;
  Table fixed_;  // AddToken()
};

// A new random token: 32 bytes from the OS, as 64 hex characters after a
// "qaas_" prefix (which makes leaked tokens easy to scan for).
absl::StatusOr<std::string> NewToken();
// The tokens-file line for `token`.
std::string TokenLine(const std::string& token, const Principal& principal);

}  // namespace qaas::server

#endif  // QAAS_SERVER_AUTH_H_
