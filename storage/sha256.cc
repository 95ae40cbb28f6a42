#include "storage/sha256.h"

#include <fcntl.h>
#include <openssl/evp.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "quant/util/status_macros.h"
#include "storage/posix_io.h"
#include "storage/uri.h"

namespace qaas::storage {
namespace {

constexpr size_t kChunkBytes = 1 << 20;

struct MdCtxFree {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;

// OpenSSL fails here only when out of memory or misbuilt (no SHA-256), so
// this is an internal invariant, not an error for callers to handle.
void CheckOpenSsl(int ok, const char* what) {
  if (ok != 1) {
    std::fprintf(stderr, "qaas::storage: OpenSSL %s failed for SHA-256\n", what);
    std::abort();
  }
}

MdCtx NewSha256Context() {
  MdCtx ctx(EVP_MD_CTX_new());
  CheckOpenSsl(ctx != nullptr, "EVP_MD_CTX_new");
  CheckOpenSsl(EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr), "EVP_DigestInit_ex");
  return ctx;
}

std::string FinishHex(EVP_MD_CTX* ctx) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  CheckOpenSsl(EVP_DigestFinal_ex(ctx, digest, &size), "EVP_DigestFinal_ex");
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), size));
}

}  // namespace

std::string Sha256Hex(std::string_view data) {
  MdCtx ctx = NewSha256Context();
  CheckOpenSsl(EVP_DigestUpdate(ctx.get(), data.data(), data.size()), "EVP_DigestUpdate");
  return FinishHex(ctx.get());
}

absl::StatusOr<std::string> Sha256File(const std::string& path) {
  const std::string what = absl::StrCat("hashing file ", QuoteForMessage(path));
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus(errno, what);
  MdCtx ctx = NewSha256Context();
  std::vector<char> buf(kChunkBytes);
  while (true) {
    QAAS_ASSIGN_OR_RETURN(size_t n,
                          ReadFull(fd.get(), buf.data(), buf.size(), /*offset=*/-1, what));
    CheckOpenSsl(EVP_DigestUpdate(ctx.get(), buf.data(), n), "EVP_DigestUpdate");
    if (n < buf.size()) break;
  }
  return FinishHex(ctx.get());
}

}  // namespace qaas::storage
