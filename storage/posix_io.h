// Small POSIX helpers shared by the storage drivers: an owning file
// descriptor, errno-to-Status conversion, and loops that finish short reads
// and writes. Internal to storage/.
#ifndef QAAS_STORAGE_POSIX_IO_H_
#define QAAS_STORAGE_POSIX_IO_H_

#include <sys/types.h>

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace qaas::storage {

// Owns a file descriptor and closes it on destruction. Move-only.
class ScopedFd {
 public:
  ScopedFd() = default;
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(ScopedFd&& other) noexcept : fd_(other.release()) {}
  ScopedFd& operator=(ScopedFd&& other) noexcept;
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd();

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership without closing.
  int release();
  // Closes now and reports the error close(2) gives, which for some
  // filesystems is the first report of a failed write. `what` names the file
  // in the message.
  absl::Status Close(std::string_view what);

 private:
  int fd_ = -1;
};

// strerror(3) text for `err`, thread-safe.
std::string ErrnoText(int err);

// A Status for errno value `err`, with the code from absl::ErrnoToStatusCode
// (ENOENT NotFound, EACCES PermissionDenied, ...) and the message
// "<what>: <strerror text>". A full disk (ENOSPC, EDQUOT) is
// ResourceExhausted with a message that says so in words.
absl::Status ErrnoStatus(int err, std::string_view what);

// Writes all of `data` to `fd` at its current offset, retrying short writes
// and EINTR.
absl::Status WriteAll(int fd, std::string_view data, std::string_view what);

// Reads up to `size` bytes into `buf`; from the current offset if `offset`
// is negative, else at `offset` (pread). Retries EINTR and short reads, so a
// result below `size` means end of file.
absl::StatusOr<size_t> ReadFull(int fd, char* buf, size_t size, off_t offset,
                                std::string_view what);

// fsync(2) with the error converted.
absl::Status Fsync(int fd, std::string_view what);

// realpath(3): the absolute path with every symlink, "." and ".." resolved.
// NotFound if some component does not exist.
absl::StatusOr<std::string> RealPath(const std::string& path, std::string_view what);

// The directory part of `path` ("a/b" -> "a", "b" -> ".", "/b" -> "/").
std::string DirName(std::string_view path);

}  // namespace qaas::storage

#endif  // QAAS_STORAGE_POSIX_IO_H_
