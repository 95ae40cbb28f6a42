// Command-line configuration of the s3:// driver, shared by qaas-server and
// qaas-worker: --s3_endpoint, --s3_region, --s3_path_style and
// --s3_credentials_file over the standard AWS environment variables.
#ifndef QAAS_STORAGE_S3_FLAGS_H_
#define QAAS_STORAGE_S3_FLAGS_H_

#include <string>

#include "absl/status/status.h"
#include "storage/s3_store.h"

namespace qaas::storage {

// Reads an env-style credentials file (a mounted Secret):
//   AWS_ACCESS_KEY_ID=...
//   AWS_SECRET_ACCESS_KEY=...
//   AWS_SESSION_TOKEN=...      (optional)
// '#' comments and blank lines are skipped. InvalidArgument naming the file
// and line for anything else; a file without both keys is InvalidArgument.
absl::Status LoadS3CredentialsFile(const std::string& path, S3Config* config);

// Builds the configuration from the environment and the flags and makes it
// the default for s3:// uris. Call after parsing the command line.
absl::Status ConfigureS3FromFlags();

}  // namespace qaas::storage

#endif  // QAAS_STORAGE_S3_FLAGS_H_
