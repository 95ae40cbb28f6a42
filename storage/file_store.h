// The file:// storage driver: objects are plain files under a root
// directory, the key being the path relative to the root.
#ifndef QAAS_STORAGE_FILE_STORE_H_
#define QAAS_STORAGE_FILE_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "storage/atomic_file.h"
#include "storage/object_store.h"
#include "storage/posix_io.h"

namespace qaas::storage {

// An ObjectStore over a local directory.
//
// Layout: key "a/b/c" is the file <root>/a/b/c; parent directories are
// created on write and removed again once empty (by Delete, or by a write
// that failed). A key cannot name a directory, and a key and a key below it
// ("a" and "a/b") cannot both exist: writing the second is
// FailedPrecondition.
//
// Atomicity: writes go to a hidden temp file ".qaas-tmp-XXXXXXXXXXXX" in the
// destination's directory, which is fsynced and renamed over the object.
// Temp names are never listed, and keys with a component starting with
// ".qaas-tmp-" are InvalidArgument. A full disk is ResourceExhausted and
// leaves the old object (or its absence) untouched. Temp files of a process
// that crashed mid-write stay behind, invisible, until removed by hand.
//
// Symlinks inside the root are followed as long as they resolve inside it:
// every access opens its path relative to the root's directory with the
// kernel refusing any step outside (openat2 RESOLVE_BENEATH, see
// storage/beneath.h), and writes create their temp file and rename it
// through the parent directory's descriptor. So a directory swapped for a
// symlink, even between two calls or during one, cannot lead a read, write
// or delete outside the root: such a key is PermissionDenied, naming it. On
// kernels without openat2 every symlink below the root is refused. List
// does not descend into symlinked directories (which could form cycles) and
// skips symlinks leading outside the root. A key naming a fifo, socket or
// device is FailedPrecondition.
//
// Errors name the key and give the errno text. Thread-safe: the store has no
// mutable state, and concurrent writers to one key each replace the whole
// file, the last rename winning. Safe across processes sharing the root too.
class FileStore : public ObjectStore {
 public:
  // Opens the store rooted at `root_dir`, which must be absolute (else
  // InvalidArgument) and is created, with its parents, if missing. The root
  // may itself be a symlink; the directory it resolves to is the boundary.
  static absl::StatusOr<std::unique_ptr<FileStore>> Create(std::string root_dir);

  // "file://" + the lexically normalised root, e.g. "file:///var/qaas".
  std::string uri() const override;

  absl::StatusOr<std::string> Read(std::string_view key) override;
  absl::StatusOr<std::string> ReadRange(std::string_view key, uint64_t offset,
                                        uint64_t length) override;
  absl::Status Write(std::string_view key, std::string_view data) override;
  absl::Status WriteFromFile(std::string_view key, const std::string& local_path) override;
  absl::Status ReadToFile(std::string_view key, const std::string& local_path) override;
  absl::StatusOr<ObjectInfo> Stat(std::string_view key) override;
  absl::StatusOr<std::vector<ObjectInfo>> List(std::string_view prefix) override;
  absl::Status Delete(std::string_view key) override;

 private:
  // An object opened for reading, with its size.
  struct OpenObject {
    ScopedFd fd;
    ObjectInfo info;
  };

  FileStore(std::string root, std::string real_root)
      : root_(std::move(root)), real_root_(std::move(real_root)) {}

  // NormalizeObjectKey, plus refusal of the reserved temp names.
  absl::StatusOr<std::string> CheckKey(std::string_view key) const;
  // The root directory, opened for this access.
  absl::StatusOr<ScopedFd> OpenRoot() const;
  // The directory `dir_key` ("" = the root), opened beneath the root.
  absl::StatusOr<ScopedFd> OpenDir(int root_fd, const std::string& dir_key, std::string_view what) const;
  // Opens the object `key` (already checked): NotFound if it is missing or a
  // directory, PermissionDenied if it resolves outside the root.
  absl::StatusOr<OpenObject> OpenForRead(const std::string& key) const;
  // Creates the parent directories of `key` (already checked), each beneath
  // the root, and returns the parent directory, opened.
  absl::StatusOr<ScopedFd> MakeParentDirs(int root_fd, const std::string& key) const;
  // Starts the atomic write of `key` (already checked).
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> StartWrite(const std::string& key) const;
  // Removes the empty parent directories of `key`, deepest first, stopping
  // at the root or at the first that is not empty. Used after a delete and
  // after a failed write.
  void RemoveEmptyParents(const std::string& key) const;
  // Appends to `out` the objects under the open directory `dir` (which holds
  // key `dir_key`) whose keys start with `prefix`, recursively.
  absl::Status ListDir(int root_fd, ScopedFd dir, const std::string& dir_key, const std::string& prefix,
                       std::vector<ObjectInfo>* out) const;

  std::string Describe(std::string_view key) const;  // "key 'k' in file:///root"

  const std::string root_;       // lexically normalised, as given
  const std::string real_root_;  // realpath of root_: the boundary keys must stay within
};

}  // namespace qaas::storage

#endif  // QAAS_STORAGE_FILE_STORE_H_
