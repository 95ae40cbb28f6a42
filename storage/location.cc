#include "storage/location.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "quant/util/status_macros.h"
#include "storage/beneath.h"
#include "storage/uri.h"

namespace qaas::storage {

std::string ObjectLocation::Key(const std::string& relative) const {
  return prefix.empty() ? relative : absl::StrCat(prefix, "/", relative);
}

std::string ObjectLocation::ListPrefix() const { return prefix.empty() ? "" : prefix + "/"; }

std::pair<std::string, std::string> SplitObjectUri(const std::string& uri) {
  std::string u = uri;
  while (u.size() > 1 && u.back() == '/') u.pop_back();
  const size_t slash = u.rfind('/');
  return {u.substr(0, slash), u.substr(slash + 1)};
}

absl::StatusOr<ObjectLocation> OpenLocation(const std::string& uri, const FileRoots& roots) {
  QAAS_ASSIGN_OR_RETURN(const Uri parsed, ParseUri(uri));
  ObjectLocation location;
  if (parsed.scheme != "file") {
    QAAS_ASSIGN_OR_RETURN(location.store, OpenObjectStore(uri));
    return location;
  }
  QAAS_ASSIGN_OR_RETURN(const std::string path, NormalizeLocalPath(parsed.path));
  // The longest prefix of the path that is (or resolves to) a root. Only that
  // prefix is resolved here; everything below it is resolved by the store,
  // beneath the root, at each access.
  std::vector<std::string> real_roots;
  for (const std::string& root : roots) {
    auto real = RealPath(root, root);
    if (real.ok()) real_roots.push_back(*real);
  }
  for (std::string prefix = path;; prefix = DirName(prefix)) {
    auto real = RealPath(prefix, prefix);
    if (real.ok() && std::find(real_roots.begin(), real_roots.end(), *real) != real_roots.end()) {
      QAAS_ASSIGN_OR_RETURN(location.store, OpenObjectStore("file://" + *real));
      location.prefix = path.size() > prefix.size() ? path.substr(prefix == "/" ? 1 : prefix.size() + 1) : "";
      return location;
    }
    if (prefix == "/") break;
  }
  return absl::PermissionDeniedError(absl::StrCat("uri '", uri, "' is under none of the allowed file roots (",
                                                  roots.empty() ? "none were given" : absl::StrJoin(roots, ", "),
                                                  ")"));
}

absl::StatusOr<ObjectRef> OpenObject(const std::string& uri, const FileRoots& roots) {
  const bool file = absl::StartsWith(uri, "file:");
  auto [parent, name] = SplitObjectUri(uri);
  ObjectRef ref;
  QAAS_ASSIGN_OR_RETURN(ref.location, OpenLocation(file ? uri : parent, roots));
  ref.key = file ? ref.location.prefix : name;
  if (ref.key.empty()) return absl::InvalidArgumentError(absl::StrCat("uri '", uri, "' names a root, not a file"));
  return ref;
}

}  // namespace qaas::storage
