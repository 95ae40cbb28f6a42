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
#include "storage/atomic_file.h"
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

std::string JoinPath(std::string_view dir, std::string_view name) {
  return dir == "/" ? absl::StrCat("/", ToAbsl(name))
                    : absl::StrCat(ToAbsl(dir), "/", ToAbsl(name));
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
  absl::StatusOr<std::string> real_root =
      RealPath(*root, absl::StrCat("resolving file store root '", *root, "'"));
  if (!real_root.ok()) return real_root.status();
  struct stat st;
  if (::stat(real_root->c_str(), &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("file store root '", *root, "'"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("file store root '", *root, "' exists and is not a directory"));
  }
  return std::unique_ptr<FileStore>(new FileStore(*std::move(root), *std::move(real_root)));
}

std::string FileStore::uri() const { return absl::StrCat("file://", root_); }

std::string FileStore::PathOf(std::string_view key) const {
  return key.empty() ? root_ : JoinPath(root_, key);
}

std::string FileStore::Describe(std::string_view key) const {
  return absl::StrCat("key ", QuoteForMessage(key), " in ", uri());
}

absl::StatusOr<std::string> FileStore::CheckKey(std::string_view key) const {
  absl::StatusOr<std::string> normalized = NormalizeObjectKey(key);
  if (!normalized.ok()) return normalized.status();
  for (absl::string_view part : absl::StrSplit(*normalized, '/')) {
    if (IsTempFileName(ToStd(part))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "key ", QuoteForMessage(key), " uses the name ", QuoteForMessage(ToStd(part)),
          "; names starting '", ToAbsl(kTempFilePrefix), "' are reserved"));
    }
  }
  return normalized;
}

absl::StatusOr<FileStore::OpenObject> FileStore::OpenForRead(const std::string& key) const {
  absl::StatusOr<std::string> resolved = RealPath(PathOf(key), Describe(key));
  if (!resolved.ok()) {
    if (IsMissing(resolved.status()))
      return absl::NotFoundError(absl::StrCat(Describe(key), " not found"));
    return resolved.status();
  }
  if (!PathIsWithin(*resolved, real_root_)) {
    return absl::PermissionDeniedError(absl::StrCat(Describe(key), " resolves to '", *resolved,
                                                    "', outside the store root; refused"));
  }
  OpenObject object;
  // O_NOFOLLOW: the resolved path has no symlinks, unless one was swapped in
  // since the check above. O_NONBLOCK: a FIFO in the root must not hang the
  // open (it is then refused below); it changes nothing for regular files.
  object.fd = ScopedFd(::open(resolved->c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!object.fd.valid()) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(Describe(key), " not found"));
    return ErrnoStatus(errno, absl::StrCat("opening ", Describe(key)));
  }
  struct stat st;
  if (::fstat(object.fd.get(), &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("examining ", Describe(key)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::NotFoundError(
        absl::StrCat(Describe(key), " not found (a directory of other objects has that name)"));
  }
  object.info.key = key;
  object.info.size = static_cast<uint64_t>(st.st_size);
  object.info.mtime_unix_ms = MtimeUnixMs(st);
  return object;
}

absl::StatusOr<std::string> FileStore::MakeParentDirs(const std::string& key) const {
  std::string dir = real_root_;
  std::string dir_key;
  const size_t last_slash = key.rfind('/');
  if (last_slash == std::string::npos) return dir;
  for (absl::string_view part : absl::StrSplit(key.substr(0, last_slash), '/')) {
    dir_key = dir_key.empty() ? std::string(part) : absl::StrCat(dir_key, "/", part);
    const std::string next = JoinPath(dir, ToStd(part));
    if (::mkdir(next.c_str(), 0777) != 0 && errno != EEXIST) {
      return ErrnoStatus(errno, absl::StrCat("creating directory ", QuoteForMessage(dir_key),
                                             " for ", Describe(key)));
    }
    // Resolve before going deeper, so that no directory is ever created
    // through a symlink that leads outside the root.
    absl::StatusOr<std::string> resolved = RealPath(
        next,
        absl::StrCat("resolving directory ", QuoteForMessage(dir_key), " for ", Describe(key)));
    if (!resolved.ok()) return resolved.status();
    if (!PathIsWithin(*resolved, real_root_)) {
      return absl::PermissionDeniedError(
          absl::StrCat(Describe(key), ": directory ", QuoteForMessage(dir_key), " resolves to '",
                       *resolved, "', outside the store root; refused"));
    }
    struct stat st;
    if (::stat(resolved->c_str(), &st) != 0) {
      return ErrnoStatus(errno, absl::StrCat("examining directory ", QuoteForMessage(dir_key),
                                             " for ", Describe(key)));
    }
    if (!S_ISDIR(st.st_mode)) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot write ", Describe(key), ": ", QuoteForMessage(dir_key),
                       " is an object, so it cannot also be a directory"));
    }
    dir = *std::move(resolved);
  }
  return dir;
}

absl::StatusOr<std::unique_ptr<AtomicFileWriter>> FileStore::StartWrite(
    const std::string& key) const {
  absl::Status last_error;
  for (int attempt = 0; attempt < kMaxWriteAttempts; ++attempt) {
    absl::StatusOr<std::string> parent = MakeParentDirs(key);
    // NotFound here means a concurrent Delete removed a directory that had
    // just been created or resolved: start again.
    if (absl::IsNotFound(parent.status())) {
      last_error = parent.status();
      continue;
    }
    if (!parent.ok()) return parent.status();
    const std::string dest = JoinPath(*parent, BaseName(key));
    struct stat st;
    // An empty directory in the way is a leftover (say of a crash between
    // mkdir and the write), not a directory of objects: it gives way.
    if (::lstat(dest.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && ::rmdir(dest.c_str()) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot write ", Describe(key), ": a directory of other objects (",
                       QuoteForMessage(key + "/..."), ") has that name"));
    }
    absl::StatusOr<std::unique_ptr<AtomicFileWriter>> writer =
        AtomicFileWriter::Create(dest, Describe(key));
    if (absl::IsNotFound(writer.status())) {
      last_error = writer.status();
      continue;
    }
    return writer;
  }
  return last_error;
}

absl::StatusOr<std::string> FileStore::Read(std::string_view key) {
  absl::StatusOr<std::string> k = CheckKey(key);
  if (!k.ok()) return k.status();
  absl::StatusOr<OpenObject> object = OpenForRead(*k);
  if (!object.ok()) return object.status();
  std::string data(object->info.size, '\0');
  absl::StatusOr<size_t> n = ReadFull(object->fd.get(), data.data(), data.size(), /*offset=*/0,
                                      absl::StrCat("reading ", Describe(*k)));
  if (!n.ok()) return n.status();
  data.resize(*n);
  return data;
}

absl::StatusOr<std::string> FileStore::ReadRange(std::string_view key, uint64_t offset,
                                                 uint64_t length) {
  absl::StatusOr<std::string> k = CheckKey(key);
  if (!k.ok()) return k.status();
  absl::StatusOr<OpenObject> object = OpenForRead(*k);
  if (!object.ok()) return object.status();
  const uint64_t size = object->info.size;
  if (offset > size) {
    return absl::OutOfRangeError(absl::StrCat("offset ", offset, " is beyond the end of ",
                                              Describe(*k), ", which has ", size, " bytes"));
  }
  std::string data(std::min(length, size - offset), '\0');
  absl::StatusOr<size_t> n =
      ReadFull(object->fd.get(), data.data(), data.size(), static_cast<off_t>(offset),
               absl::StrCat("reading ", Describe(*k)));
  if (!n.ok()) return n.status();
  data.resize(*n);
  return data;
}

absl::Status FileStore::Write(std::string_view key, std::string_view data) {
  absl::StatusOr<std::string> k = CheckKey(key);
  if (!k.ok()) return k.status();
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> writer = StartWrite(*k);
  absl::Status status = writer.status();
  if (status.ok()) status = (*writer)->Append(data);
  if (status.ok()) status = (*writer)->Commit();
  if (!status.ok()) RemoveEmptyParents(*k);  // the directories this write created
  return status;
}

absl::Status FileStore::WriteFromFile(std::string_view key, const std::string& local_path) {
  absl::StatusOr<std::string> k = CheckKey(key);
  if (!k.ok()) return k.status();
  const std::string source = absl::StrCat("local file ", QuoteForMessage(local_path));
  ScopedFd fd(::open(local_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return ErrnoStatus(errno, absl::StrCat("opening ", source, " to write ", Describe(*k)));
  }
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> writer = StartWrite(*k);
  absl::Status status = writer.status();
  if (status.ok()) status = (*writer)->AppendFromFd(fd.get(), source);
  if (status.ok()) status = (*writer)->Commit();
  if (!status.ok()) RemoveEmptyParents(*k);  // the directories this write created
  return status;
}

absl::Status FileStore::ReadToFile(std::string_view key, const std::string& local_path) {
  absl::StatusOr<std::string> k = CheckKey(key);
  if (!k.ok()) return k.status();
  if (local_path.empty() || local_path.back() == '/') {
    return absl::InvalidArgumentError(absl::StrCat("local path ", QuoteForMessage(local_path),
                                                   " to read ", Describe(*k),
                                                   " into does not name a file"));
  }
  absl::StatusOr<OpenObject> object = OpenForRead(*k);
  if (!object.ok()) return object.status();
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> writer = AtomicFileWriter::Create(
      local_path, absl::StrCat("local file ", QuoteForMessage(local_path)));
  if (!writer.ok()) return writer.status();
  absl::Status status = (*writer)->AppendFromFd(object->fd.get(), Describe(*k));
  if (!status.ok()) return status;
  return (*writer)->Commit();
}

absl::StatusOr<ObjectInfo> FileStore::Stat(std::string_view key) {
  absl::StatusOr<std::string> k = CheckKey(key);
  if (!k.ok()) return k.status();
  absl::StatusOr<OpenObject> object = OpenForRead(*k);
  if (!object.ok()) return object.status();
  return std::move(object->info);
}

absl::Status FileStore::Delete(std::string_view key) {
  absl::StatusOr<std::string> k = CheckKey(key);
  if (!k.ok()) return k.status();
  absl::StatusOr<std::string> parent = RealPath(DirName(PathOf(*k)), Describe(*k));
  if (!parent.ok()) {
    if (IsMissing(parent.status()))
      return absl::NotFoundError(absl::StrCat(Describe(*k), " not found"));
    return parent.status();
  }
  if (!PathIsWithin(*parent, real_root_)) {
    return absl::PermissionDeniedError(
        absl::StrCat(Describe(*k), " lies in '", *parent, "', outside the store root; refused"));
  }
  const std::string path = JoinPath(*parent, BaseName(*k));
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR)
      return absl::NotFoundError(absl::StrCat(Describe(*k), " not found"));
    return ErrnoStatus(errno, absl::StrCat("examining ", Describe(*k)));
  }
  if (S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(
        absl::StrCat(Describe(*k), " not found (a directory of other objects has that name)"));
  }
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(Describe(*k), " not found"));
    return ErrnoStatus(errno, absl::StrCat("deleting ", Describe(*k)));
  }
  RemoveEmptyParents(*k);
  return absl::OkStatus();
}

void FileStore::RemoveEmptyParents(const std::string& key) const {
  // Best effort: rmdir fails, and the walk stops, at the first directory that
  // still holds something, including a concurrent writer's temp file. Each
  // directory is resolved first so that nothing outside the root is touched.
  for (std::string dir = DirName(key); dir != "."; dir = DirName(dir)) {
    absl::StatusOr<std::string> real = RealPath(PathOf(dir), dir);
    if (!real.ok() || *real == real_root_ || !PathIsWithin(*real, real_root_)) break;
    if (::rmdir(real->c_str()) != 0) break;
  }
}

absl::StatusOr<std::vector<ObjectInfo>> FileStore::List(std::string_view prefix) {
  absl::StatusOr<std::string> p = NormalizeListPrefix(prefix);
  if (!p.ok()) return p.status();
  // Only the directory named by the prefix up to its last '/' can hold
  // matches, so the walk starts there.
  const size_t last_slash = p->rfind('/');
  const std::string start_key = last_slash == std::string::npos ? "" : p->substr(0, last_slash);
  std::vector<ObjectInfo> out;
  absl::StatusOr<std::string> start = RealPath(
      PathOf(start_key), absl::StrCat("listing prefix ", QuoteForMessage(*p), " in ", uri()));
  if (!start.ok()) {
    if (IsMissing(start.status())) return out;
    return start.status();
  }
  if (!PathIsWithin(*start, real_root_)) {
    return absl::PermissionDeniedError(absl::StrCat("listing prefix ", QuoteForMessage(*p), " in ",
                                                    uri(), ": directory resolves to '", *start,
                                                    "', outside the store root; refused"));
  }
  absl::Status status = ListDir(*start, start_key, *p, &out);
  if (!status.ok()) return status;
  std::sort(out.begin(), out.end(),
            [](const ObjectInfo& a, const ObjectInfo& b) { return a.key < b.key; });
  return out;
}

absl::Status FileStore::ListDir(const std::string& dir_path, const std::string& dir_key,
                                const std::string& prefix, std::vector<ObjectInfo>* out) const {
  // O_NOFOLLOW: the walk never enters a symlinked directory. List passes the
  // start directory already resolved.
  ScopedFd fd(::open(dir_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) {
    if (errno == ENOENT || errno == ENOTDIR) return absl::OkStatus();  // removed meanwhile
    return ErrnoStatus(errno,
                       absl::StrCat("listing directory ", QuoteForMessage(dir_key), " in ", uri()));
  }
  std::unique_ptr<DIR, DirCloser> dir(::fdopendir(fd.get()));
  if (dir == nullptr) return ErrnoStatus(errno, absl::StrCat("listing ", dir_path));
  fd.release();  // now owned by `dir`
  while (true) {
    errno = 0;
    const struct dirent* entry = ::readdir(dir.get());
    if (entry == nullptr) break;
    const std::string_view name = entry->d_name;
    if (name == "." || name == ".." || IsTempFileName(name)) continue;
    const std::string key =
        dir_key.empty() ? std::string(name) : absl::StrCat(dir_key, "/", ToAbsl(name));
    struct stat st;
    if (::fstatat(::dirfd(dir.get()), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) continue;  // deleted meanwhile
      return ErrnoStatus(errno, absl::StrCat("listing ", Describe(key)));
    }
    if (S_ISDIR(st.st_mode)) {
      const std::string sub = key + "/";
      if (absl::StartsWith(sub, prefix) || absl::StartsWith(prefix, sub)) {
        absl::Status status = ListDir(JoinPath(dir_path, name), key, prefix, out);
        if (!status.ok()) return status;
      }
      continue;
    }
    if (!absl::StartsWith(key, prefix)) continue;
    if (S_ISLNK(st.st_mode)) {
      // A symlink counts as an object if it leads to a regular file inside
      // the root, just as Read would follow it.
      absl::StatusOr<std::string> target = RealPath(JoinPath(dir_path, name), Describe(key));
      if (!target.ok() || !PathIsWithin(*target, real_root_)) continue;
      if (::stat(target->c_str(), &st) != 0) continue;
    }
    if (!S_ISREG(st.st_mode)) continue;
    out->push_back(ObjectInfo{key, static_cast<uint64_t>(st.st_size), MtimeUnixMs(st)});
  }
  if (errno != 0) return ErrnoStatus(errno, absl::StrCat("listing ", dir_path));
  return absl::OkStatus();
}

}  // namespace qaas::storage
