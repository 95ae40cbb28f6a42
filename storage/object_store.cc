#include "storage/object_store.h"

#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "quant/util/status_macros.h"
#include "storage/file_store.h"
#include "storage/s3_store.h"
#include "storage/uri.h"

namespace qaas::storage {

absl::StatusOr<std::unique_ptr<ObjectStore>> OpenObjectStore(std::string_view uri) {
  QAAS_ASSIGN_OR_RETURN(Uri parsed, ParseUri(uri));
  if (parsed.scheme == "file") {
    QAAS_ASSIGN_OR_RETURN(std::unique_ptr<FileStore> store, FileStore::Create(parsed.path));
    return std::unique_ptr<ObjectStore>(std::move(store));
  }
  if (parsed.scheme == "s3") {
    QAAS_ASSIGN_OR_RETURN(auto store,
                          S3Store::Create(parsed.authority, parsed.path, DefaultS3Config()));
    return std::unique_ptr<ObjectStore>(std::move(store));
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown storage scheme ",
                                                 QuoteForMessage(parsed.scheme), " in uri ",
                                                 QuoteForMessage(uri), "; use file:// or s3://"));
}

absl::StatusOr<std::string> NormalizeObjectKey(std::string_view key) {
  QAAS_ASSIGN_OR_RETURN(std::string normalized, NormalizeKey(key));
  if (normalized.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("key ", QuoteForMessage(key), " names the store root, not an object"));
  }
  return normalized;
}

absl::StatusOr<std::string> NormalizeListPrefix(std::string_view prefix) {
  QAAS_ASSIGN_OR_RETURN(std::string normalized, NormalizeKey(prefix));
  if (!normalized.empty() && !prefix.empty() && prefix.back() == '/') normalized.push_back('/');
  return normalized;
}

}  // namespace qaas::storage
