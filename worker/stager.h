// Staging of job inputs from object storage into a local cache, and upload of
// a job's outputs. A staged directory is keyed by the sha256 of its uri and
// its objects' (key, size, mtime), so an unchanged model is fetched once; it
// appears atomically (downloaded under a temp name, then renamed).
#ifndef QAAS_WORKER_STAGER_H_
#define QAAS_WORKER_STAGER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "storage/object_store.h"

namespace qaas::worker {

// The server's allowed file roots (resolved paths), as a lease carries them.
// A file:// uri is opened as a key below the root that holds it, never as a
// store of its own: the file store then resolves every component beneath
// that root at the moment of each access (storage/beneath.h), so a directory
// inside the root swapped for a symlink after submit cannot redirect a read
// or a write outside the roots.
using FileRoots = std::vector<std::string>;

// Where a uri's objects live: the store and the key they sit under in it.
struct ObjectLocation {
  std::unique_ptr<storage::ObjectStore> store;
  std::string prefix;  // "" or a normalised key ("models/llama")
  // prefix + "/" + relative (or `relative` when prefix is "").
  std::string Key(const std::string& relative) const;
};
// s3:// uris: the store at the uri, prefix "". file:// uris: the store at
// the root holding the path (a prefix of the path that resolves to one of
// `roots`), the rest of the path as prefix. PermissionDenied naming the uri
// when no root holds it.
absl::StatusOr<ObjectLocation> OpenLocation(const std::string& uri, const FileRoots& roots);

// Each function adds the bytes it moved to `*bytes` when given (a cache hit
// moves none).
//
// Copies every object under the directory `uri` into the cache; returns the
// local directory. NotFound when the uri holds no objects.
absl::StatusOr<std::string> StageDirectory(const std::string& uri, const FileRoots& roots,
                                           const std::string& cache_dir, uint64_t* bytes = nullptr);
// Copies the single object `uri` into the cache; returns the local file path.
absl::StatusOr<std::string> StageFile(const std::string& uri, const FileRoots& roots, const std::string& cache_dir,
                                      uint64_t* bytes = nullptr);
// Uploads every file under `local_dir` to the directory `uri`, keeping
// relative paths; files named in `last` go after all others (so their
// presence means the rest is complete).
// Files whose relative path starts with `skip_prefix` (when not empty) are
// left out (the per-layer checkpoints, uploaded as they were made).
absl::Status UploadDirectory(const std::string& local_dir, const std::string& uri, const FileRoots& roots,
                             const std::vector<std::string>& last, uint64_t* bytes = nullptr,
                             const std::string& skip_prefix = "");
// Uploads the files `relative_paths` of `local_dir` to the directory `uri`, in order.
absl::Status UploadFiles(const std::string& local_dir, const std::string& uri, const FileRoots& roots,
                         const std::vector<std::string>& relative_paths, uint64_t* bytes = nullptr);
// Copies every object under `uri`/`prefix` into `local_dir`/`prefix` (an
// interrupted attempt's checkpoints); returns how many. Nothing there is not
// an error.
absl::StatusOr<int> DownloadPrefix(const std::string& uri, const FileRoots& roots, const std::string& prefix,
                                   const std::string& local_dir, uint64_t* bytes = nullptr);
// Deletes every object under the directory `uri` that has no file at the
// same relative path under `local_dir` (what an overwritten output held
// before); returns how many.
absl::StatusOr<int> RemoveStale(const std::string& local_dir, const std::string& uri, const FileRoots& roots);
// Splits "file:///a/b/c.txt" into ("file:///a/b", "c.txt").
std::pair<std::string, std::string> SplitObjectUri(const std::string& uri);

}  // namespace qaas::worker

#endif  // QAAS_WORKER_STAGER_H_
