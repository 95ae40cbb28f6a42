// Conversion between the API's qaas.v1.QuantScheme and quant::Scheme, shared by
// the server (validation) and the worker (execution). Torch-free.
#ifndef QAAS_PROTO_SCHEME_CONVERT_H_
#define QAAS_PROTO_SCHEME_CONVERT_H_

#include "absl/status/statusor.h"
#include "qaas/v1/job.pb.h"
#include "quant/scheme.h"

namespace qaas {

// The scheme a spec asks for: its shorthand and/or its structured fields.
// InvalidArgument naming the field when neither is given, when both are given
// and disagree, or when the structured fields are inconsistent.
absl::StatusOr<quant::Scheme> SchemeFromProto(const v1::QuantScheme& proto);
// Structured fields, plus the canonical shorthand when it expresses the scheme.
v1::QuantScheme SchemeToProto(const quant::Scheme& scheme);

}  // namespace qaas

#endif  // QAAS_PROTO_SCHEME_CONVERT_H_
