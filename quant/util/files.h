// Small local-file helpers for quant/ (which works on local directories only).
#ifndef QAAS_QUANT_UTIL_FILES_H_
#define QAAS_QUANT_UTIL_FILES_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
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

// A file written piece by piece that appears at `path` complete or not at
// all: Append writes through to a temp file in the same directory, Commit
// syncs and renames it; destruction before Commit removes the temp file.
class AtomicOutputFile {
 public:
  static absl::StatusOr<std::unique_ptr<AtomicOutputFile>> Create(const std::string& path);
  AtomicOutputFile(const AtomicOutputFile&) = delete;
  AtomicOutputFile& operator=(const AtomicOutputFile&) = delete;
  ~AtomicOutputFile();
  // ResourceExhausted on a full disk; after an error the write is abandoned.
  absl::Status Append(absl::string_view data);
  absl::Status Commit();

 private:
  AtomicOutputFile(std::string path, std::string tmp, int fd) : path_(std::move(path)), tmp_(std::move(tmp)), fd_(fd) {}
  absl::Status Fail(int err, absl::string_view what);
  std::string path_, tmp_;
  int fd_ = -1;
};

bool FileExists(const std::string& path);
absl::Status MakeDirs(const std::string& path);
absl::Status CopyFile(const std::string& from, const std::string& to);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_UTIL_FILES_H_
