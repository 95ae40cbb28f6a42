#include "storage/file_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "quant/util/status_macros.h"
#include "storage/atomic_file.h"
#include "storage/beneath.h"
#include "storage/posix_io.h"
#include "storage/string_view_compat.h"
#include "storage/uri.h"

namespace qaas::storage {
namespace {

// How often a write starts over when a concurrent Delete removes the
// (empty) directory it was about to write into.
constexpr int kMaxWriteAttempts = 16;

std::string BaseName(std::string_view key) {
  const size_t slash = key.rfind('/');
  return std::string(slash == std::string_view::npos ? key : key.substr(slash + 1));
}

int64_t MtimeUnixMs(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1000000;
}

// True for the errors realpath/open give when a path, or a directory on it,
// does not exist (ENOENT), or a file stands where a directory should (ENOTDIR).
bool IsMissing(const absl::Status& status) {
  return absl::IsNotFound(status) || absl::IsFailedPrecondition(status);
}

struct DirCloser {
  void operator()(DIR* dir) const { ::closedir(dir); }
};

}  // namespace

absl::StatusOr<std::unique_ptr<FileStore>> FileStore::Create(std::string root_dir) {
  absl::StatusOr<std::string> root = NormalizeLocalPath(root_dir);
  if (!root.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("file store root must be an absolute path: ", root.status().message()));
  }
  std::string partial;
  for (absl::string_view part : absl::StrSplit(*root, '/', absl::SkipEmpty())) {
    absl::StrAppend(&partial, "/", part);
    if (::mkdir(partial.c_str(), 0777) != 0 && errno != EEXIST) {
      return ErrnoStatus(errno,
                         absl::StrCat("creating file store root '", *root, "' at '", partial, "'"));
    }
  }
  QAAS_ASSIGN_OR_RETURN(std::string real_root,
                        RealPath(*root, absl::StrCat("resolving file store root '", *root, "'")));
  struct stat st;
  if (::stat(real_root.c_str(), &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("file store root '", *root, "'"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("file store root '", *root, "' exists and is not a directory"));
  }
  return std::unique_ptr<FileStore>(new FileStore(*std::move(root), std::move(real_root)));
}

std::string FileStore::uri() const { return absl::StrCat("file://", root_); }

std::string FileStore::Describe(std::string_view key) const {
  return absl::StrCat("key ", QuoteForMessage(key), " in ", uri());
}

absl::StatusOr<std::string> FileStore::CheckKey(std::string_view key) const {
  QAAS_ASSIGN_OR_RETURN(std::string normalized, NormalizeObjectKey(key));
  for (absl::string_view part : absl::StrSplit(normalized, '/')) {
    if (IsTempFileName(ToStd(part))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "key ", QuoteForMessage(key), " uses the name ", QuoteForMessage(ToStd(part)),
          "; names starting '", ToAbsl(kTempFilePrefix), "' are reserved"));
    }
  }
  return normalized;
}

absl::StatusOr<ScopedFd> FileStore::OpenRoot() const {
  ScopedFd fd(::open(real_root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus(errno, absl::StrCat("opening the root of ", uri()));
  return fd;
}

absl::StatusOr<ScopedFd> FileStore::OpenDir(int root_fd, const std::string& dir_key, std::string_view what) const {
  return OpenBeneath(root_fd, dir_key, O_RDONLY | O_DIRECTORY, what);
}

absl::StatusOr<FileStore::OpenObject> FileStore::OpenForRead(const std::string& key) const {
  QAAS_ASSIGN_OR_RETURN(const ScopedFd root, OpenRoot());
  // O_NONBLOCK: a FIFO in the root must not hang the open (it is refused
  // below); it changes nothing for regular files.
  auto fd = OpenBeneath(root.get(), key, O_RDONLY | O_NONBLOCK, absl::StrCat("opening ", Describe(key)));
  if (!fd.ok()) {
    if (IsMissing(fd.status())) return absl::NotFoundError(absl::StrCat(Describe(key), " not found"));
    return fd.status();
  }
  OpenObject object;
  object.fd = *std::move(fd);
  struct stat st;
  if (::fstat(object.fd.get(), &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("examining ", Describe(key)));
  }
  if (S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(
        absl::StrCat(Describe(key), " not found (a directory of other objects has that name)"));
  }
  if (!S_ISREG(st.st_mode)) {
    const char* kind = S_ISFIFO(st.st_mode) ? "a fifo" : S_ISSOCK(st.st_mode) ? "a socket" : "a device";
    return absl::FailedPreconditionError(
        absl::StrCat(Describe(key), " is ", kind, ", not a regular file; refused"));
  }
  object.info.key = key;
  object.info.size = static_cast<uint64_t>(st.st_size);
  object.info.mtime_unix_ms = MtimeUnixMs(st);
  return object;
}

absl::StatusOr<ScopedFd> FileStore::MakeParentDirs(int root_fd, const std::string& key) const {
  const size_t last_slash = key.rfind('/');
  QAAS_ASSIGN_OR_RETURN(ScopedFd dir, OpenDir(root_fd, "", absl::StrCat("opening the root of ", uri())));
  if (last_slash == std::string::npos) return dir;
  std::string dir_key;
  for (absl::string_view part : absl::StrSplit(key.substr(0, last_slash), '/')) {
    // mkdirat does not follow a symlink in its last component, and `dir` was
    // opened beneath the root: nothing is ever created outside it.
    if (::mkdirat(dir.get(), std::string(part).c_str(), 0777) != 0 && errno != EEXIST) {
      return ErrnoStatus(errno, absl::StrCat("creating directory ", QuoteForMessage(absl::StrCat(dir_key, part)),
                                             " for ", Describe(key)));
    }
    dir_key = dir_key.empty() ? std::string(part) : absl::StrCat(dir_key, "/", part);
    auto next = OpenDir(root_fd, dir_key,
                        absl::StrCat("opening directory ", QuoteForMessage(dir_key), " for ", Describe(key)));
    if (!next.ok()) {
      struct stat st;
      if (absl::IsFailedPrecondition(next.status()) &&
          ::fstatat(dir.get(), std::string(part).c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode)) {
        return absl::FailedPreconditionError(
            absl::StrCat("cannot write ", Describe(key), ": ", QuoteForMessage(dir_key),
                         " is an object, so it cannot also be a directory"));
      }
      return next.status();
    }
    dir = *std::move(next);
  }
  return dir;
}

absl::StatusOr<std::unique_ptr<AtomicFileWriter>> FileStore::StartWrite(const std::string& key) const {
  QAAS_ASSIGN_OR_RETURN(const ScopedFd root, OpenRoot());
  const std::string name = BaseName(key);
  absl::Status last_error;
  for (int attempt = 0; attempt < kMaxWriteAttempts; ++attempt) {
    absl::StatusOr<ScopedFd> parent = MakeParentDirs(root.get(), key);
    // NotFound here means a concurrent Delete removed a directory that had
    // just been created or opened: start again.
    if (absl::IsNotFound(parent.status())) {
      last_error = parent.status();
      continue;
    }
    if (!parent.ok()) return parent.status();
    struct stat st;
    // An empty directory in the way is a leftover (say of a crash between
    // mkdir and the write), not a directory of objects: it gives way.
    if (::fstatat(parent->get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode) &&
        ::unlinkat(parent->get(), name.c_str(), AT_REMOVEDIR) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot write ", Describe(key), ": a directory of other objects (",
                       QuoteForMessage(key + "/..."), ") has that name"));
    }
    // The temp file, the rename and the sync go through the parent's
    // descriptor: a rename of a directory on the way cannot move the write.
    absl::StatusOr<std::unique_ptr<AtomicFileWriter>> writer =
        AtomicFileWriter::CreateAt(*std::move(parent), name, Describe(key));
    if (absl::IsNotFound(writer.status())) {
      last_error = writer.status();
      continue;
    }
    return writer;
  }
  return last_error;
}

absl::StatusOr<std::string> FileStore::Read(std::string_view key) {
  QAAS_ASSIGN_OR_RETURN(const std::string k, CheckKey(key));
  QAAS_ASSIGN_OR_RETURN(const OpenObject object, OpenForRead(k));
  std::string data(object.info.size, '\0');
  QAAS_ASSIGN_OR_RETURN(const size_t n, ReadFull(object.fd.get(), data.data(), data.size(), /*offset=*/0,
                                                 absl::StrCat("reading ", Describe(k))));
  data.resize(n);
  return data;
}

absl::StatusOr<std::string> FileStore::ReadRange(std::string_view key, uint64_t offset, uint64_t length) {
  QAAS_ASSIGN_OR_RETURN(const std::string k, CheckKey(key));
  QAAS_ASSIGN_OR_RETURN(const OpenObject object, OpenForRead(k));
  const uint64_t size = object.info.size;
  if (offset > size) {
    return absl::OutOfRangeError(absl::StrCat("offset ", offset, " is beyond the end of ", Describe(k),
                                              ", which has ", size, " bytes"));
  }
  std::string data(std::min(length, size - offset), '\0');
  QAAS_ASSIGN_OR_RETURN(const size_t n, ReadFull(object.fd.get(), data.data(), data.size(),
                                                 static_cast<off_t>(offset), absl::StrCat("reading ", Describe(k))));
  data.resize(n);
  return data;
}

absl::Status FileStore::Write(std::string_view key, std::string_view data) {
  QAAS_ASSIGN_OR_RETURN(const std::string k, CheckKey(key));
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> writer = StartWrite(k);
  absl::Status status = writer.status();
  if (status.ok()) status = (*writer)->Append(data);
  if (status.ok()) status = (*writer)->Commit();
  if (!status.ok()) RemoveEmptyParents(k);  // the directories this write created
  return status;
}

absl::Status FileStore::WriteFromFile(std::string_view key, const std::string& local_path) {
  QAAS_ASSIGN_OR_RETURN(const std::string k, CheckKey(key));
  const std::string source = absl::StrCat("local file ", QuoteForMessage(local_path));
  ScopedFd fd(::open(local_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return ErrnoStatus(errno, absl::StrCat("opening ", source, " to write ", Describe(k)));
  }
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> writer = StartWrite(k);
  absl::Status status = writer.status();
  if (status.ok()) status = (*writer)->AppendFromFd(fd.get(), source);
  if (status.ok()) status = (*writer)->Commit();
  if (!status.ok()) RemoveEmptyParents(k);  // the directories this write created
  return status;
}

absl::Status FileStore::ReadToFile(std::string_view key, const std::string& local_path) {
  QAAS_ASSIGN_OR_RETURN(const std::string k, CheckKey(key));
  if (local_path.empty() || local_path.back() == '/') {
    return absl::InvalidArgumentError(absl::StrCat("local path ", QuoteForMessage(local_path), " to read ",
                                                   Describe(k), " into does not name a file"));
  }
  QAAS_ASSIGN_OR_RETURN(const OpenObject object, OpenForRead(k));
  QAAS_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> writer,
                        AtomicFileWriter::Create(local_path, absl::StrCat("local file ", QuoteForMessage(local_path))));
  QAAS_RETURN_IF_ERROR(writer->AppendFromFd(object.fd.get(), Describe(k)));
  return writer->Commit();
}

absl::StatusOr<ObjectInfo> FileStore::Stat(std::string_view key) {
  QAAS_ASSIGN_OR_RETURN(const std::string k, CheckKey(key));
  QAAS_ASSIGN_OR_RETURN(OpenObject object, OpenForRead(k));
  return std::move(object.info);
}

absl::Status FileStore::Delete(std::string_view key) {
  QAAS_ASSIGN_OR_RETURN(const std::string k, CheckKey(key));
  QAAS_ASSIGN_OR_RETURN(const ScopedFd root, OpenRoot());
  const std::string dir_key = DirName(k) == "." ? "" : DirName(k);
  auto parent = OpenDir(root.get(), dir_key, Describe(k));
  if (!parent.ok()) {
    if (IsMissing(parent.status())) return absl::NotFoundError(absl::StrCat(Describe(k), " not found"));
    return parent.status();
  }
  const std::string name = BaseName(k);
  struct stat st;
  if (::fstatat(parent->get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return absl::NotFoundError(absl::StrCat(Describe(k), " not found"));
    return ErrnoStatus(errno, absl::StrCat("examining ", Describe(k)));
  }
  if (S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(
        absl::StrCat(Describe(k), " not found (a directory of other objects has that name)"));
  }
  if (::unlinkat(parent->get(), name.c_str(), 0) != 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(Describe(k), " not found"));
    return ErrnoStatus(errno, absl::StrCat("deleting ", Describe(k)));
  }
  RemoveEmptyParents(k);
  return absl::OkStatus();
}

void FileStore::RemoveEmptyParents(const std::string& key) const {
  // Best effort: the removal fails, and the walk stops, at the first
  // directory that still holds something, including a concurrent writer's
  // temp file. Each directory is reached beneath the root.
  auto root = OpenRoot();
  if (!root.ok()) return;
  for (std::string dir = DirName(key); dir != "." && !dir.empty(); dir = DirName(dir)) {
    const std::string up = DirName(dir) == "." ? "" : DirName(dir);
    auto parent = OpenDir(root->get(), up, dir);
    if (!parent.ok() || ::unlinkat(parent->get(), BaseName(dir).c_str(), AT_REMOVEDIR) != 0) break;
  }
}

absl::StatusOr<std::vector<ObjectInfo>> FileStore::List(std::string_view prefix) {
  QAAS_ASSIGN_OR_RETURN(const std::string p, NormalizeListPrefix(prefix));
  // Only the directory named by the prefix up to its last '/' can hold
  // matches, so the walk starts there.
  const size_t last_slash = p.rfind('/');
  const std::string start_key = last_slash == std::string::npos ? "" : p.substr(0, last_slash);
  std::vector<ObjectInfo> out;
  QAAS_ASSIGN_OR_RETURN(const ScopedFd root, OpenRoot());
  auto start = OpenDir(root.get(), start_key, absl::StrCat("listing prefix ", QuoteForMessage(p), " in ", uri()));
  if (!start.ok()) {
    if (IsMissing(start.status())) return out;
    return start.status();
  }
  QAAS_RETURN_IF_ERROR(ListDir(root.get(), *std::move(start), start_key, p, &out));
  std::sort(out.begin(), out.end(), [](const ObjectInfo& a, const ObjectInfo& b) { return a.key < b.key; });
  return out;
}

absl::Status FileStore::ListDir(int root_fd, ScopedFd fd, const std::string& dir_key, const std::string& prefix,
                                std::vector<ObjectInfo>* out) const {
  std::unique_ptr<DIR, DirCloser> dir(::fdopendir(fd.get()));
  if (dir == nullptr) {
    return ErrnoStatus(errno, absl::StrCat("listing directory ", QuoteForMessage(dir_key), " in ", uri()));
  }
  fd.release();  // now owned by `dir`
  while (true) {
    errno = 0;
    const struct dirent* entry = ::readdir(dir.get());
    if (entry == nullptr) break;
    const std::string_view name = entry->d_name;
    if (name == "." || name == ".." || IsTempFileName(name)) continue;
    const std::string key = dir_key.empty() ? std::string(name) : absl::StrCat(dir_key, "/", ToAbsl(name));
    struct stat st;
    if (::fstatat(::dirfd(dir.get()), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) continue;  // deleted meanwhile
      return ErrnoStatus(errno, absl::StrCat("listing ", Describe(key)));
    }
    if (S_ISDIR(st.st_mode)) {
      const std::string sub = key + "/";
      if (absl::StartsWith(sub, prefix) || absl::StartsWith(prefix, sub)) {
        // O_NOFOLLOW: the walk never enters a symlinked directory (which
        // could form cycles).
        ScopedFd sub_fd(::openat(::dirfd(dir.get()), entry->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
        if (!sub_fd.valid()) {
          if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP) continue;  // changed meanwhile
          return ErrnoStatus(errno, absl::StrCat("listing directory ", QuoteForMessage(key), " in ", uri()));
        }
        QAAS_RETURN_IF_ERROR(ListDir(root_fd, std::move(sub_fd), key, prefix, out));
      }
      continue;
    }
    if (!absl::StartsWith(key, prefix)) continue;
    if (S_ISLNK(st.st_mode)) {
      // A symlink counts as an object if it leads to a regular file beneath
      // the root, just as Read would follow it.
      auto target = OpenBeneath(root_fd, key, O_RDONLY | O_NONBLOCK, Describe(key));
      if (!target.ok() || ::fstat(target->get(), &st) != 0) continue;
    }
    if (!S_ISREG(st.st_mode)) continue;
    out->push_back(ObjectInfo{key, static_cast<uint64_t>(st.st_size), MtimeUnixMs(st)});
  }
  if (errno != 0) return ErrnoStatus(errno, absl::StrCat("listing directory ", QuoteForMessage(dir_key)));
  return absl::OkStatus();
}

}  // namespace qaas::storage
