// Where a uri's objects live, opened so that a file:// uri stays beneath the
// allowed root that holds it at every access (storage/beneath.h): the worker
// and the server's submit checks and report reads all go through here.
#ifndef QAAS_STORAGE_LOCATION_H_
#define QAAS_STORAGE_LOCATION_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "storage/object_store.h"

namespace qaas::storage {

// The server's allowed file roots (resolved paths), as a lease carries them.
// A file:// uri is opened as a key below the root that holds it, never as a
// store of its own: the file store then resolves every component beneath
// that root at the moment of each access, so a directory inside the root
// swapped for a symlink after submit cannot redirect a read or a write
// outside the roots.
using FileRoots = std::vector<std::string>;

// The store and the key a uri's objects sit under in it.
struct ObjectLocation {
  std::unique_ptr<ObjectStore> store;
  std::string prefix;  // "" or a normalised key ("models/llama")
  // prefix + "/" + relative (or `relative` when prefix is "").
  std::string Key(const std::string& relative) const;
  // What List takes for every object under the location: prefix + "/" (or
  // "" when prefix is ""); a listed key minus it is the object's path
  // relative to the location.
  std::string ListPrefix() const;
};

// s3:// uris: the store at the uri, prefix "". file:// uris: the store at
// the root holding the path (a prefix of the path that resolves to one of
// `roots`), the rest of the path as prefix. PermissionDenied naming the uri
// when no root holds it.
absl::StatusOr<ObjectLocation> OpenLocation(const std::string& uri, const FileRoots& roots);

// The store and key of the single object `uri` (a file, not a directory):
// file:// as OpenLocation with the whole path as key; s3:// the store at the
// object's parent with its name as key. InvalidArgument when the uri names a
// root itself.
struct ObjectRef {
  ObjectLocation location;
  std::string key;
};
absl::StatusOr<ObjectRef> OpenObject(const std::string& uri, const FileRoots& roots);

// Splits "file:///a/b/c.txt" into ("file:///a/b", "c.txt").
std::pair<std::string, std::string> SplitObjectUri(const std::string& uri);

}  // namespace qaas::storage

#endif  // QAAS_STORAGE_LOCATION_H_
