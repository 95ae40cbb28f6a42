// Opening a path that cannot leave its root: every component is resolved
// relative to a directory descriptor, and a symlink (or "..") whose target
// lies outside that directory is refused by the kernel at the moment of the
// open, so a directory swapped for a symlink between a check and the use
// cannot redirect it. Internal to storage/.
//
// Linux 5.6+ does this in one openat2(2) call with RESOLVE_BENEATH (symlinks
// that stay beneath the root keep working). Where openat2 is missing
// (ENOSYS, or a seccomp filter that answers EPERM), the fallback walks the
// path one component at a time with O_NOFOLLOW: then every symlink on the
// way is refused, inside the root or not.
#ifndef QAAS_STORAGE_BENEATH_H_
#define QAAS_STORAGE_BENEATH_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "storage/posix_io.h"

namespace qaas::storage {

// Opens `relative` (a normalised relative path, "" = the root itself) below
// the directory `root_fd` with open(2) `flags` (O_CLOEXEC is added) and
// `mode`. A path that resolves outside the root is PermissionDenied; other
// failures are the errno's status. `what` names the target in messages.
absl::StatusOr<ScopedFd> OpenBeneath(int root_fd, std::string_view relative, int flags, std::string_view what,
                                     int mode = 0);

// Tests: true makes OpenBeneath use the O_NOFOLLOW walk even where openat2
// exists; returns the previous setting.
bool ForceNoFollowWalkForTesting(bool force);

}  // namespace qaas::storage

#endif  // QAAS_STORAGE_BENEATH_H_
