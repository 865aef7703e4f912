#pragma once

#include <cstdint>
#include <string>

namespace o3mount {

// One version of an object, as an open file holds on to it (lib/o3/etag.ts ObjectPin): every
// response must carry this ETag (compared without quotes and weak marker) and, once known, this
// version id. Reads send If-Match and versionId but do not rely on the server honouring them.
struct ObjectPin {
  std::string key;        // relative to the bucket (the mount's prefix already applied)
  std::string etag;       // normalised: no quotes, no W/
  std::string versionId;  // empty: not versioned or not yet known
  uint64_t size = 0;
};

}  // namespace o3mount
