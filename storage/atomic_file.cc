#include "storage/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "storage/string_view_compat.h"

namespace qaas::storage {
namespace {

constexpr size_t kCopyChunkBytes = 1 << 20;
constexpr int kMaxNameAttempts = 100;

// 12 random characters from [a-z0-9]: enough that concurrent writers to one
// directory, in this process or another, essentially never collide, and
// O_EXCL catches the rare collision anyway.
std::string RandomSuffix() {
  static constexpr std::string_view kAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uniform_int_distribution<size_t> pick(0, kAlphabet.size() - 1);
  std::string out(12, ' ');
  for (char& c : out) c = kAlphabet[pick(rng)];
  return out;
}

}  // namespace

bool IsTempFileName(std::string_view name) {
  return absl::StartsWith(ToAbsl(name), ToAbsl(kTempFilePrefix));
}

absl::StatusOr<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Create(std::string final_path,
                                                                           std::string what) {
  const std::string dir = DirName(final_path);
  ScopedFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd.valid()) {
    return ErrnoStatus(errno, absl::StrCat("opening directory '", dir, "' for ", what));
  }
  const size_t slash = final_path.rfind('/');
  return CreateAt(std::move(dir_fd), slash == std::string::npos ? final_path : final_path.substr(slash + 1),
                  std::move(what));
}

absl::StatusOr<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::CreateAt(ScopedFd dir, std::string name,
                                                                             std::string what) {
  for (int attempt = 0; attempt < kMaxNameAttempts; ++attempt) {
    std::string temp_name = absl::StrCat(ToAbsl(kTempFilePrefix), RandomSuffix());
    // O_NOFOLLOW: nothing planted under the temp name is followed.
    const int fd =
        ::openat(dir.get(), temp_name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0666);
    if (fd >= 0) {
      return std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(
          std::move(dir), std::move(name), std::move(temp_name), std::move(what), ScopedFd(fd)));
    }
    if (errno == EEXIST) continue;
    return ErrnoStatus(errno, absl::StrCat("creating a temp file for ", what));
  }
  return absl::InternalError(absl::StrCat("creating a temp file for ", what, ": every name tried existed"));
}

AtomicFileWriter::~AtomicFileWriter() { Abandon(); }

void AtomicFileWriter::Abandon() {
  if (done_) return;
  done_ = true;
  fd_.Close(temp_name_).IgnoreError();  // the data is being thrown away
  ::unlinkat(dir_.get(), temp_name_.c_str(), 0);
}

absl::Status AtomicFileWriter::Fail(absl::Status status) {
  if (status.ok()) return status;
  Abandon();
  return absl::Status(status.code(),
                      absl::StrCat(status.message(), "; nothing was stored and the previous ",
                                   "contents of ", what_, ", if any, are unchanged"));
}

absl::Status AtomicFileWriter::Append(std::string_view data) {
  if (done_) return absl::FailedPreconditionError(absl::StrCat("write of ", what_, " is over"));
  return Fail(WriteAll(fd_.get(), data, absl::StrCat("writing ", what_)));
}

absl::Status AtomicFileWriter::AppendFromFd(int fd, std::string_view source) {
  if (done_) return absl::FailedPreconditionError(absl::StrCat("write of ", what_, " is over"));
  std::vector<char> buf(kCopyChunkBytes);
  while (true) {
    absl::StatusOr<size_t> n = ReadFull(fd, buf.data(), buf.size(), /*offset=*/-1,
                                        absl::StrCat("reading ", ToAbsl(source)));
    if (!n.ok()) return Fail(n.status());
    if (*n == 0) return absl::OkStatus();
    absl::Status written =
        WriteAll(fd_.get(), std::string_view(buf.data(), *n), absl::StrCat("writing ", what_));
    if (!written.ok()) return Fail(std::move(written));
    if (*n < buf.size()) return absl::OkStatus();  // ReadFull stops short only at end of file
  }
}

absl::Status AtomicFileWriter::Commit() {
  if (done_) return absl::FailedPreconditionError(absl::StrCat("write of ", what_, " is over"));
  // Sync before rename: otherwise a crash could leave the new name pointing
  // at a file whose data never reached the disk.
  absl::Status status = Fsync(fd_.get(), what_);
  if (status.ok()) status = fd_.Close(what_);
  if (!status.ok()) return Fail(std::move(status));
  if (::renameat(dir_.get(), temp_name_.c_str(), dir_.get(), name_.c_str()) != 0) {
    return Fail(ErrnoStatus(errno, absl::StrCat("renaming the temp file into place for ", what_)));
  }
  done_ = true;
  // Sync the directory so that the rename itself survives a crash.
  return Fsync(dir_.get(), absl::StrCat("the directory of ", what_));
}

}  // namespace qaas::storage
