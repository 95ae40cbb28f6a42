#include "quant/util/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (!FileExists(path)) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status WriteFileAtomic(const std::string& path, absl::string_view data) {
  return WriteFileAtomic(path, std::vector<absl::string_view>{data});
}

absl::Status WriteFileAtomic(const std::string& path, const std::vector<absl::string_view>& pieces) {
  QAAS_ASSIGN_OR_RETURN(auto file, AtomicOutputFile::Create(path));
  for (absl::string_view data : pieces) QAAS_RETURN_IF_ERROR(file->Append(data));
  return file->Commit();
}

absl::StatusOr<std::unique_ptr<AtomicOutputFile>> AtomicOutputFile::Create(const std::string& path) {
  std::string tmp = path + ".tmp-XXXXXX";
  int fd = ::mkstemp(tmp.data());
  if (fd < 0) return absl::InternalError(absl::StrCat(path, ": cannot create: ", std::strerror(errno)));
  return std::unique_ptr<AtomicOutputFile>(new AtomicOutputFile(path, std::move(tmp), fd));
}

AtomicOutputFile::~AtomicOutputFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

absl::Status AtomicOutputFile::Fail(int err, absl::string_view what) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_.c_str());
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(absl::StrCat(path_, ": disk full"));
  return absl::InternalError(absl::StrCat(path_, ": ", what, " failed: ", std::strerror(err)));
}

absl::Status AtomicOutputFile::Append(absl::string_view data) {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": write already abandoned"));
  size_t done = 0;
  while (done < data.size()) {
    ssize_t w = ::write(fd_, data.data() + done, data.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Fail(errno, "write");
    }
    done += static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

absl::Status AtomicOutputFile::Commit() {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": write already abandoned"));
  if (::fsync(fd_) != 0) return Fail(errno, "write");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) return Fail(errno, "write");
  ::chmod(tmp_.c_str(), 0644);
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    return absl::InternalError(absl::StrCat(path_, ": rename failed: ", std::strerror(err)));
  }
  return absl::OkStatus();
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

absl::Status MakeDirs(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) return absl::InternalError(absl::StrCat(path, ": cannot create directory: ", ec.message()));
  return absl::OkStatus();
}

absl::Status CopyFile(const std::string& from, const std::string& to) {
  QAAS_ASSIGN_OR_RETURN(auto data, ReadFile(from));
  return WriteFileAtomic(to, data);
}

}  // namespace qaas::quant
