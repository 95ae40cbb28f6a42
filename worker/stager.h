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
#include "storage/location.h"
#include "storage/object_store.h"

namespace qaas::worker {

// The roots and locations are storage's (storage/location.h): every file://
// access below resolves beneath the root that holds the uri.
using storage::FileRoots;
using storage::ObjectLocation;
using storage::OpenLocation;
using storage::SplitObjectUri;

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

}  // namespace qaas::worker

#endif  // QAAS_WORKER_STAGER_H_
