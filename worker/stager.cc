#include "worker/stager.h"

#include <algorithm>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "storage/object_store.h"
#include "storage/posix_io.h"
#include "storage/sha256.h"
#include "storage/uri.h"
#include "quant/util/status_macros.h"

namespace qaas::worker {
namespace fs = std::filesystem;

namespace {

absl::Status Materialize(const std::string& final_dir, const std::function<absl::Status(const std::string&)>& fill) {
  if (fs::exists(final_dir + "/.complete")) return absl::OkStatus();
  std::error_code ec;
  const std::string tmp = absl::StrCat(final_dir, ".partial-", ::getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("cache: cannot create ", tmp, ": ", ec.message()));
  if (auto st = fill(tmp); !st.ok()) {
    fs::remove_all(tmp, ec);
    return st;
  }
  std::ofstream(tmp + "/.complete") << "ok\n";
  fs::remove_all(final_dir, ec);
  fs::rename(tmp, final_dir, ec);
  if (ec && !fs::exists(final_dir + "/.complete")) {
    return absl::InternalError(absl::StrCat("cache: cannot rename into ", final_dir, ": ", ec.message()));
  }
  fs::remove_all(tmp, ec);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> StageDirectory(const std::string& uri, const FileRoots& roots,
                                           const std::string& cache_dir, uint64_t* bytes) {
  QAAS_ASSIGN_OR_RETURN(const ObjectLocation loc, OpenLocation(uri, roots));
  const std::string list_prefix = loc.ListPrefix();
  QAAS_ASSIGN_OR_RETURN(const std::vector<storage::ObjectInfo> objects, loc.store->List(list_prefix));
  if (objects.empty()) return absl::NotFoundError(absl::StrCat("'", uri, "' holds no files"));
  std::string fingerprint = uri;
  for (const auto& o : objects) absl::StrAppend(&fingerprint, "\n", o.key, " ", o.size, " ", o.mtime_unix_ms);
  const std::string dir = absl::StrCat(cache_dir, "/", storage::Sha256Hex(fingerprint).substr(0, 32));
  QAAS_RETURN_IF_ERROR(Materialize(dir, [&](const std::string& tmp) -> absl::Status {
    for (const auto& o : objects) {
      const std::string local = tmp + "/" + o.key.substr(list_prefix.size());
      std::error_code ec;
      fs::create_directories(fs::path(local).parent_path(), ec);
      QAAS_RETURN_IF_ERROR(loc.store->ReadToFile(o.key, local));
      if (bytes) *bytes += o.size;
    }
    return absl::OkStatus();
  }));
  return dir;
}

absl::StatusOr<std::string> StageFile(const std::string& uri, const FileRoots& roots, const std::string& cache_dir,
                                      uint64_t* bytes) {
  QAAS_ASSIGN_OR_RETURN(const storage::ObjectRef object, storage::OpenObject(uri, roots));
  const storage::ObjectLocation& loc = object.location;
  const std::string& key = object.key;
  const std::string name = SplitObjectUri(uri).second;
  QAAS_ASSIGN_OR_RETURN(const storage::ObjectInfo info, loc.store->Stat(key));
  const std::string dir = absl::StrCat(
      cache_dir, "/", storage::Sha256Hex(absl::StrCat(uri, " ", info.size, " ", info.mtime_unix_ms)).substr(0, 32));
  QAAS_RETURN_IF_ERROR(Materialize(dir, [&](const std::string& tmp) -> absl::Status {
    QAAS_RETURN_IF_ERROR(loc.store->ReadToFile(key, tmp + "/" + name));
    if (bytes) *bytes += info.size;
    return absl::OkStatus();
  }));
  return dir + "/" + name;
}

absl::Status UploadDirectory(const std::string& local_dir, const std::string& uri, const FileRoots& roots,
                             const std::vector<std::string>& last, uint64_t* bytes, const std::string& skip_prefix) {
  std::vector<std::string> files;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(local_dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (!it->is_regular_file()) continue;
    std::string rel = fs::relative(it->path(), local_dir).string();
    if (skip_prefix.empty() || rel.rfind(skip_prefix, 0) != 0) files.push_back(std::move(rel));
  }
  if (ec) return absl::InternalError(absl::StrCat("upload: cannot list ", local_dir, ": ", ec.message()));
  std::stable_partition(files.begin(), files.end(), [&](const std::string& f) {
    return std::find(last.begin(), last.end(), f) == last.end();
  });
  return UploadFiles(local_dir, uri, roots, files, bytes);
}

absl::Status UploadFiles(const std::string& local_dir, const std::string& uri, const FileRoots& roots,
                         const std::vector<std::string>& files, uint64_t* bytes) {
  QAAS_ASSIGN_OR_RETURN(const ObjectLocation loc, OpenLocation(uri, roots));
  std::error_code ec;
  for (const auto& f : files) {
    QAAS_RETURN_IF_ERROR(loc.store->WriteFromFile(loc.Key(f), local_dir + "/" + f));
    if (bytes) {
      const auto size = fs::file_size(local_dir + "/" + f, ec);
      if (!ec) *bytes += size;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int> DownloadPrefix(const std::string& uri, const FileRoots& roots, const std::string& prefix,
                                   const std::string& local_dir, uint64_t* bytes) {
  QAAS_ASSIGN_OR_RETURN(const ObjectLocation loc, OpenLocation(uri, roots));
  const std::string base = loc.ListPrefix();
  auto objects = loc.store->List(base + prefix);
  if (!objects.ok()) {
    if (absl::IsNotFound(objects.status())) return 0;  // the output prefix does not exist yet
    return objects.status();
  }
  std::error_code ec;
  for (const auto& o : *objects) {
    const std::string local = local_dir + "/" + o.key.substr(base.size());
    fs::create_directories(fs::path(local).parent_path(), ec);
    QAAS_RETURN_IF_ERROR(loc.store->ReadToFile(o.key, local));
    if (bytes) *bytes += o.size;
  }
  return static_cast<int>(objects->size());
}

absl::StatusOr<int> RemoveStale(const std::string& local_dir, const std::string& uri, const FileRoots& roots) {
  QAAS_ASSIGN_OR_RETURN(const ObjectLocation loc, OpenLocation(uri, roots));
  const std::string base = loc.ListPrefix();
  QAAS_ASSIGN_OR_RETURN(const std::vector<storage::ObjectInfo> objects, loc.store->List(base));
  int removed = 0;
  for (const auto& o : objects) {
    std::error_code ec;
    if (fs::is_regular_file(local_dir + "/" + o.key.substr(base.size()), ec)) continue;
    QAAS_RETURN_IF_ERROR(loc.store->Delete(o.key));
    ++removed;
  }
  return removed;
}

}  // namespace qaas::worker
