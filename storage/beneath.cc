#include "storage/beneath.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "storage/string_view_compat.h"

namespace qaas::storage {
namespace {

std::atomic<bool> force_walk{false};

absl::Status Escapes(std::string_view what) {
  return absl::PermissionDeniedError(
      absl::StrCat(ToAbsl(what), " resolves outside the store root (through a symlink or '..'); refused"));
}

// openat2 with RESOLVE_BENEATH; -1 with errno ENOSYS where the kernel (or a
// seccomp policy) does not offer it.
int OpenAt2(int dir_fd, const std::string& path, int flags, int mode) {
#ifdef SYS_openat2
  struct open_how how = {};
  how.flags = static_cast<uint64_t>(flags);
  how.mode = (flags & (O_CREAT | O_TMPFILE)) ? static_cast<uint64_t>(mode) : 0;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  int fd;
  do {
    fd = static_cast<int>(::syscall(SYS_openat2, dir_fd, path.c_str(), &how, sizeof(how)));
  } while (fd < 0 && errno == EINTR);
  return fd;
#else
  errno = ENOSYS;
  return -1;
#endif
}

// The fallback: each directory opened with O_NOFOLLOW relative to the last.
absl::StatusOr<ScopedFd> Walk(int root_fd, const std::string& path, int flags, std::string_view what, int mode) {
  ScopedFd current;
  int dir = root_fd;
  std::vector<std::string> parts = absl::StrSplit(path, '/', absl::SkipEmpty());
  if (parts.empty()) parts.push_back(".");
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i] == "..") return Escapes(what);
    const bool last = i + 1 == parts.size();
    const int f = last ? (flags | O_NOFOLLOW) : (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int fd;
    do {
      fd = ::openat(dir, parts[i].c_str(), f, mode);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
      const int err = errno;
      struct stat st;
      // A symlink met with O_NOFOLLOW (ELOOP, or ENOTDIR where a directory
      // was wanted): refused, wherever it points.
      if ((err == ELOOP || err == ENOTDIR) && ::fstatat(dir, parts[i].c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
          S_ISLNK(st.st_mode)) {
        return absl::PermissionDeniedError(
            absl::StrCat(ToAbsl(what), ": '", parts[i],
                         "' is a symlink, and this kernel has no openat2 to follow it safely; refused"));
      }
      return ErrnoStatus(err, what);
    }
    current = ScopedFd(fd);
    dir = fd;
  }
  return current;
}

}  // namespace

bool ForceNoFollowWalkForTesting(bool force) { return force_walk.exchange(force); }

absl::StatusOr<ScopedFd> OpenBeneath(int root_fd, std::string_view relative, int flags, std::string_view what,
                                     int mode) {
  const std::string path = relative.empty() ? "." : std::string(relative);
  flags |= O_CLOEXEC;
  if (!force_walk.load()) {
    const int fd = OpenAt2(root_fd, path, flags, mode);
    if (fd >= 0) return ScopedFd(fd);
    if (errno == EXDEV) return Escapes(what);
    if (errno != ENOSYS && errno != EPERM) return ErrnoStatus(errno, what);
    // EPERM: some seccomp policies answer unknown syscalls so; the walk
    // decides (a real permission error shows up there again).
  }
  return Walk(root_fd, path, flags, what, mode);
}

}  // namespace qaas::storage
