// All-or-nothing creation of local files: the way FileStore stores objects
// and every driver's ReadToFile writes the caller's file.
#ifndef QAAS_STORAGE_ATOMIC_FILE_H_
#define QAAS_STORAGE_ATOMIC_FILE_H_

#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "storage/posix_io.h"

namespace qaas::storage {

// Names of in-progress temp files start with this. It is a hidden name, and
// FileStore neither lists such files nor accepts keys that use it.
inline constexpr std::string_view kTempFilePrefix = ".qaas-tmp-";

// True if `name` (one path component) is an AtomicFileWriter temp name.
bool IsTempFileName(std::string_view name);

// Writes a file that appears at its final path complete or not at all. The
// data goes to a uniquely named temp file ".qaas-tmp-XXXXXXXXXXXX" in the
// destination's directory; Commit syncs it, renames it over the destination
// (atomic on POSIX filesystems) and syncs the directory. Any failure, or
// destruction before Commit, removes the temp file, leaving the destination
// as it was.
//
// One writer is used by one thread. Several writers may target the same
// destination at once; each Commit replaces the file whole, the last wins.
class AtomicFileWriter {
 public:
  // Starts writing `final_path`, whose directory must exist. The file gets
  // mode 0666 less the umask. `what` names the destination in error
  // messages, e.g. "key 'a/b'" or "local file '/tmp/x'".
  static absl::StatusOr<std::unique_ptr<AtomicFileWriter>> Create(std::string final_path,
                                                                  std::string what);
  // The same for the file `name` (one path component) in the open directory
  // `dir`: the temp file, the rename and the sync all go through `dir`, so
  // the write cannot be redirected by a rename or symlink of a directory
  // above it after this call.
  static absl::StatusOr<std::unique_ptr<AtomicFileWriter>> CreateAt(ScopedFd dir, std::string name,
                                                                    std::string what);

  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  ~AtomicFileWriter();  // abandons the write unless committed

  // Appends `data`. On error the write is abandoned and every later call
  // fails too.
  absl::Status Append(std::string_view data);

  // Appends everything readable from `fd` (from its current offset to end
  // of file), in bounded chunks so memory use does not grow with the size.
  // `source` names the source in error messages.
  absl::Status AppendFromFd(int fd, std::string_view source);

  // Makes the data durable and visible at the final path. If only the final
  // directory sync fails, the new file is already visible although an error
  // is returned.
  absl::Status Commit();


 private:
  AtomicFileWriter(ScopedFd dir, std::string name, std::string temp_name, std::string what, ScopedFd fd)
      : dir_(std::move(dir)),
        name_(std::move(name)),
        temp_name_(std::move(temp_name)),
        what_(std::move(what)),
        fd_(std::move(fd)) {}

  // Removes the temp file and returns `status` with a note that nothing was
  // stored; no-op on OK.
  absl::Status Fail(absl::Status status);
  void Abandon();

  const ScopedFd dir_;          // the destination's directory
  const std::string name_;      // the destination, in dir_
  const std::string temp_name_; // the temp file, in dir_
  const std::string what_;
  ScopedFd fd_;
  bool done_ = false;  // committed or abandoned
};

}  // namespace qaas::storage

#endif  // QAAS_STORAGE_ATOMIC_FILE_H_
