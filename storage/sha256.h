// SHA-256 digests (FIPS 180-4) via OpenSSL's EVP interface, written as
// lower-case hex: the form used for content addressing and integrity checks.
#ifndef QAAS_STORAGE_SHA256_H_
#define QAAS_STORAGE_SHA256_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace qaas::storage {

// The SHA-256 of `data` as 64 lower-case hex characters. Thread-safe.
std::string Sha256Hex(std::string_view data);

// The SHA-256 of the file at `path` as 64 lower-case hex characters, read in
// bounded chunks so memory use does not grow with the file. Errors carry the
// errno code and name the path (NotFound if it is missing). Blocks on I/O;
// thread-safe.
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace qaas::storage

#endif  // QAAS_STORAGE_SHA256_H_
