#include "worker/stager.h"

#include <algorithm>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "absl/strings/str_cat.h"
#include "storage/object_store.h"
#include "storage/sha256.h"

namespace qaas::worker {
namespace fs = std::filesystem;

std::pair<std::string, std::string> SplitObjectUri(const std::string& uri) {
  std::string u = uri;
  while (u.size() > 1 && u.back() == '/') u.pop_back();
  const size_t slash = u.rfind('/');
  return {u.substr(0, slash), u.substr(slash + 1)};
}

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

absl::StatusOr<std::string> StageDirectory(const std::string& uri, const std::string& cache_dir, uint64_t* bytes) {
  auto store = storage::OpenObjectStore(uri);
  if (!store.ok()) return store.status();
  auto objects = (*store)->List("");
  if (!objects.ok()) return objects.status();
  if (objects->empty()) return absl::NotFoundError(absl::StrCat("'", uri, "' holds no files"));
  std::string fingerprint = uri;
  for (const auto& o : *objects) absl::StrAppend(&fingerprint, "\n", o.key, " ", o.size, " ", o.mtime_unix_ms);
  const std::string dir = absl::StrCat(cache_dir, "/", storage::Sha256Hex(fingerprint).substr(0, 32));
  auto st = Materialize(dir, [&](const std::string& tmp) -> absl::Status {
    for (const auto& o : *objects) {
      const std::string local = tmp + "/" + o.key;
      std::error_code ec;
      fs::create_directories(fs::path(local).parent_path(), ec);
      if (auto st = (*store)->ReadToFile(o.key, local); !st.ok()) return st;
      if (bytes) *bytes += o.size;
    }
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return dir;
}

absl::StatusOr<std::string> StageFile(const std::string& uri, const std::string& cache_dir, uint64_t* bytes) {
  auto [root, key] = SplitObjectUri(uri);
  auto store = storage::OpenObjectStore(root);
  if (!store.ok()) return store.status();
  auto info = (*store)->Stat(key);
  if (!info.ok()) return info.status();
  const std::string dir = absl::StrCat(
      cache_dir, "/", storage::Sha256Hex(absl::StrCat(uri, " ", info->size, " ", info->mtime_unix_ms)).substr(0, 32));
  auto st = Materialize(dir, [&, key = key](const std::string& tmp) -> absl::Status {
    if (auto st = (*store)->ReadToFile(key, tmp + "/" + key); !st.ok()) return st;
    if (bytes) *bytes += info->size;
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return dir + "/" + key;
}

absl::Status UploadDirectory(const std::string& local_dir, const std::string& uri,
                             const std::vector<std::string>& last, uint64_t* bytes, const std::string& skip_prefix) {
  auto store = storage::OpenObjectStore(uri);
  if (!store.ok()) return store.status();
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
  return UploadFiles(local_dir, uri, files, bytes);
}

absl::Status UploadFiles(const std::string& local_dir, const std::string& uri,
                         const std::vector<std::string>& files, uint64_t* bytes) {
  auto store = storage::OpenObjectStore(uri);
  if (!store.ok()) return store.status();
  std::error_code ec;
  for (const auto& f : files) {
    if (auto st = (*store)->WriteFromFile(f, local_dir + "/" + f); !st.ok()) return st;
    if (bytes) {
      const auto size = fs::file_size(local_dir + "/" + f, ec);
      if (!ec) *bytes += size;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int> DownloadPrefix(const std::string& uri, const std::string& prefix, const std::string& local_dir,
                                   uint64_t* bytes) {
  auto store = storage::OpenObjectStore(uri);
  if (!store.ok()) return store.status();
  auto objects = (*store)->List(prefix);
  if (!objects.ok()) {
    if (absl::IsNotFound(objects.status())) return 0;  // the output prefix does not exist yet
    return objects.status();
  }
  std::error_code ec;
  for (const auto& o : *objects) {
    const std::string local = local_dir + "/" + o.key;
    fs::create_directories(fs::path(local).parent_path(), ec);
    if (auto st = (*store)->ReadToFile(o.key, local); !st.ok()) return st;
    if (bytes) *bytes += o.size;
  }
  return static_cast<int>(objects->size());
}

}  // namespace qaas::worker
