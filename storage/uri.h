// Storage URIs, object keys and local paths: parsing and purely lexical
// normalisation. Nothing here touches the filesystem; drivers use these
// functions so that no key can name anything outside the store's root.
#ifndef QAAS_STORAGE_URI_H_
#define QAAS_STORAGE_URI_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace qaas::storage {

// A storage location, split into the parts the drivers need. The text is
// taken literally: no percent-decoding, and '?' and '#' are ordinary
// characters of the path.
struct Uri {
  std::string scheme;     // lower-cased, e.g. "file", "s3"
  std::string authority;  // "" for file; the bucket for s3
  // file: the absolute local directory, lexically normalised ("/a/b").
  // s3:   the key prefix inside the bucket, normalised with NormalizeKey
  //       ("" for the whole bucket, otherwise "dir/sub" with no slashes at
  //       either end).
  // other schemes: everything after the authority, unchanged.
  std::string path;

  bool operator==(const Uri& other) const {
    return scheme == other.scheme && authority == other.authority && path == other.path;
  }
};

// Parses "scheme://authority/path". Accepted forms for the schemes the
// drivers know:
//   file:///abs/dir          (authority must be empty: "file://host/x" is
//                             rejected, since a remote host cannot be reached)
//   s3://bucket[/prefix...]  (bucket: 3-63 of [a-z0-9.-])
// Other well-formed schemes are parsed generically so that the caller can
// answer with a message naming the scheme. Returns InvalidArgument, naming
// the uri, when the text is not a uri or a known scheme's rules are broken.
absl::StatusOr<Uri> ParseUri(std::string_view uri);

// Normalises an object key: keys are relative and '/'-separated. Empty and
// "." components are dropped and ".." removes the previous component, so
// "a//b/./c/../d" becomes "a/b/d". The result has no leading or trailing '/'.
//
// The empty key (or one that normalises to empty, like "a/..") is returned
// as "" and names the store's root; it is valid only as a List prefix, and
// object operations reject it (see NormalizeObjectKey in object_store.h).
//
// Returns InvalidArgument, naming the key, when it is absolute (starts with
// '/'), contains a NUL byte, or escapes the root ("..", "a/../../b").
absl::StatusOr<std::string> NormalizeKey(std::string_view key);

// Joins a key prefix and a key with exactly one '/' between them; either may
// be empty, in which case the other is returned unchanged. Purely textual:
// normalise the result with NormalizeKey if either part is untrusted.
std::string JoinKey(std::string_view prefix, std::string_view key);

// Lexically normalises an absolute local path: collapses duplicate slashes
// and "." components and resolves ".." (".." at the root stays at the root,
// as the kernel does). The result has no trailing '/' except for "/" itself.
// Symlinks are not resolved; use realpath(3) for that. Returns
// InvalidArgument, naming the path, if it is relative or contains a NUL.
absl::StatusOr<std::string> NormalizeLocalPath(std::string_view abs_path);

// True if `path` is `root` or lies below it, comparing whole components, so
// "/a/b/c" and "/a/b" are within "/a/b" but "/a/bc" is not. Both arguments
// must already be normalised (NormalizeLocalPath or realpath(3)).
bool PathIsWithin(std::string_view path, std::string_view root);

// Quotes a key or path for an error message: 'text', with control bytes (a
// NUL, a newline) written as \xNN so the message stays one readable line.
std::string QuoteForMessage(std::string_view text);

}  // namespace qaas::storage

#endif  // QAAS_STORAGE_URI_H_
