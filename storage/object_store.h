// The storage driver interface: a flat namespace of immutable-per-write
// objects addressed by relative keys, in the style of S3. Drivers are chosen
// by uri scheme in OpenObjectStore; every driver must pass the conformance
// suite in tests/storage/object_store_conformance.h.
#ifndef QAAS_STORAGE_OBJECT_STORE_H_
#define QAAS_STORAGE_OBJECT_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace qaas::storage {

struct ObjectInfo {
  std::string key;  // normalised, relative to the store root
  uint64_t size = 0;
  int64_t mtime_unix_ms = 0;  // last modification, milliseconds since the Unix epoch
};

// Keys: every method normalises its key with NormalizeKey (storage/uri.h), so
// "a//b/./c" and "a/b/c" name the same object, and a key that is absolute,
// contains a NUL or climbs above the root ("../x", "a/../../x") is answered
// with InvalidArgument naming it, before anything is read or written. The
// empty key names no object and is valid only as a List prefix. Drivers may
// reserve further names (FileStore reserves its ".qaas-tmp-" temp names).
//
// Errors common to all methods: InvalidArgument for a bad key, NotFound for a
// missing object, ResourceExhausted when the backend is full, Unavailable for
// a transient failure worth retrying, PermissionDenied when access is refused.
// Messages name the key.
//
// Thread-safety: all methods may be called concurrently, on the same key too.
// Methods block on I/O.
class ObjectStore {
 public:
  virtual ~ObjectStore() = default;

  // The root uri the store was opened with, e.g. "file:///var/qaas".
  virtual std::string uri() const = 0;

  // The whole object. NotFound if there is no object under `key`.
  virtual absl::StatusOr<std::string> Read(std::string_view key) = 0;

  // Up to `length` bytes starting at `offset`, clipped at the end of the
  // object: offset == size gives "". OutOfRange if offset > size.
  virtual absl::StatusOr<std::string> ReadRange(std::string_view key, uint64_t offset,
                                                uint64_t length) = 0;

  // Creates or replaces the object. Atomic: concurrent readers see the old
  // value or the new one, never a mix or a prefix; on failure the old value
  // (or absence) stays and nothing partial is visible.
  virtual absl::Status Write(std::string_view key, std::string_view data) = 0;

  // Like Write, with the data streamed from the local file `local_path`, so
  // that objects larger than memory can be stored. NotFound if the local file
  // is missing.
  virtual absl::Status WriteFromFile(std::string_view key, const std::string& local_path) = 0;

  // Streams the object into the local file `local_path`, replacing it
  // atomically: the data goes to a temp file beside it, which is renamed over
  // `local_path` only once complete. The local path is the caller's choice
  // and is not confined to the store's root.
  virtual absl::Status ReadToFile(std::string_view key, const std::string& local_path) = 0;

  // Size and modification time of the object.
  virtual absl::StatusOr<ObjectInfo> Stat(std::string_view key) = 0;

  // Every object whose normalised key starts with `prefix`, recursively,
  // sorted by key. The prefix is a plain string prefix ("a/b" matches
  // "a/b/c" and "a/bc"; "a/b/" only the former); "" lists everything. The
  // prefix is normalised like a key, keeping a trailing '/'. An empty result
  // is not an error.
  virtual absl::StatusOr<std::vector<ObjectInfo>> List(std::string_view prefix) = 0;

  // Removes the object. NotFound if there is none.
  virtual absl::Status Delete(std::string_view key) = 0;
};

// Opens the store rooted at `uri`:
//   "file:///abs/dir"   a FileStore over that directory, created if missing;
//   "s3://bucket/pre"   an S3Store (storage/s3_store.h) with DefaultS3Config();
//   any other scheme    InvalidArgument naming it.
// A malformed uri is InvalidArgument naming the uri. The caller owns the store.
absl::StatusOr<std::unique_ptr<ObjectStore>> OpenObjectStore(std::string_view uri);

// Key helpers for drivers, so that all of them validate keys the same way.
//
// NormalizeObjectKey: NormalizeKey, and InvalidArgument if the key is empty
// after normalisation (it would name the root, not an object).
absl::StatusOr<std::string> NormalizeObjectKey(std::string_view key);
// NormalizeListPrefix: NormalizeKey, keeping a trailing '/' so that "a/"
// still excludes "ab"; "" stays "".
absl::StatusOr<std::string> NormalizeListPrefix(std::string_view prefix);

}  // namespace qaas::storage

#endif  // QAAS_STORAGE_OBJECT_STORE_H_
