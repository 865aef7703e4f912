#pragma once

#include <string>

namespace o3mount {

// AWS-style keys for SigV4. Secrets come from the control plane (environment or a file there), never
// from argv, and are never logged.
struct Credentials {
  std::string accessKeyId;
  std::string secretAccessKey;
  std::string sessionToken;  // empty when none
};

}  // namespace o3mount
