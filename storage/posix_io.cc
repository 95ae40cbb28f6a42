#include "storage/posix_io.h"

#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "storage/string_view_compat.h"

namespace qaas::storage {
namespace {

// strerror_r comes in two flavours; overloading picks whichever libc has.
[[maybe_unused]] std::string StrerrorResult(int rc, const char* buf) {  // XSI
  return rc == 0 ? std::string(buf) : "unknown error";
}
[[maybe_unused]] std::string StrerrorResult(const char* text, const char*) {  // GNU
  return std::string(text);
}

}  // namespace

ScopedFd& ScopedFd::operator=(ScopedFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.release();
  }
  return *this;
}

ScopedFd::~ScopedFd() {
  if (fd_ >= 0) ::close(fd_);
}

int ScopedFd::release() {
  const int fd = fd_;
  fd_ = -1;
  return fd;
}

absl::Status ScopedFd::Close(std::string_view what) {
  if (fd_ < 0) return absl::OkStatus();
  // Linux releases the descriptor even when close fails, so never retry it.
  const int rc = ::close(release());
  if (rc != 0) return ErrnoStatus(errno, absl::StrCat("closing ", ToAbsl(what)));
  return absl::OkStatus();
}

std::string ErrnoText(int err) {
  char buf[256];
  return StrerrorResult(::strerror_r(err, buf, sizeof(buf)), buf);
}

absl::Status ErrnoStatus(int err, std::string_view what) {
  if (err == ENOSPC || err == EDQUOT) {
    return absl::ResourceExhaustedError(
        absl::StrCat(ToAbsl(what), ": the disk is full (", ErrnoText(err), ")"));
  }
  return absl::Status(absl::ErrnoToStatusCode(err),
                      absl::StrCat(ToAbsl(what), ": ", ErrnoText(err)));
}

absl::Status WriteAll(int fd, std::string_view data, std::string_view what) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, what);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> ReadFull(int fd, char* buf, size_t size, off_t offset,
                                std::string_view what) {
  size_t done = 0;
  while (done < size) {
    const ssize_t n = offset < 0
                          ? ::read(fd, buf + done, size - done)
                          : ::pread(fd, buf + done, size - done, offset + static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, what);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

absl::Status Fsync(int fd, std::string_view what) {
  while (::fsync(fd) != 0) {
    if (errno != EINTR) return ErrnoStatus(errno, absl::StrCat("syncing ", ToAbsl(what)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RealPath(const std::string& path, std::string_view what) {
  char* resolved = ::realpath(path.c_str(), nullptr);
  if (resolved == nullptr) return ErrnoStatus(errno, what);
  std::string out(resolved);
  std::free(resolved);
  return out;
}

std::string DirName(std::string_view path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string_view::npos) return ".";
  if (slash == 0) return "/";
  return std::string(path.substr(0, slash));
}

}  // namespace qaas::storage
