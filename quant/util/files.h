// Small local-file helpers for quant/ (which works on local directories only).
#ifndef QAAS_QUANT_UTIL_FILES_H_
#define QAAS_QUANT_UTIL_FILES_H_

#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace qaas::quant {

// NotFound when missing; InvalidArgument for other errors; both name the path.
absl::StatusOr<std::string> ReadFile(const std::string& path);
// Writes via a temp file in the same directory, fsync, rename. ResourceExhausted on a full disk.
absl::Status WriteFileAtomic(const std::string& path, absl::string_view data);
// The same for the concatenation of `pieces`, written one after another (no
// copy of the whole file in memory).
absl::Status WriteFileAtomic(const std::string& path, const std::vector<absl::string_view>& pieces);
bool FileExists(const std::string& path);
absl::Status MakeDirs(const std::string& path);
absl::Status CopyFile(const std::string& from, const std::string& to);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_UTIL_FILES_H_
