#pragma once

#include <string>
#include <utility>

namespace o3mount {

// Error kinds of the byte path, one per way a read can fail; filesystem.cpp maps them to errno in
// one place (no curl or HTTP code reaches the FUSE session). They mirror lib/o3/errors.ts.
enum class ErrorKind {
  Ok,
  NotFound,     // 404 / NoSuchKey               -> ENOENT
  Auth,         // 401/403, signature            -> EACCES
  Integrity,    // another version, bad range, a leaf that does not match -> EIO
  Stream,       // transfer failed after retries -> EIO
  Unreachable,  // connect refused / DNS         -> EIO
  Timeout,      // the op deadline passed        -> EIO
  Cancelled,    // the mount is going away       -> EIO
  NoMemory,     //                               -> ENOMEM
};

// The kind's name as written above ("NotFound"), for logs and the test tools' JSON.
constexpr const char* errorKindName(ErrorKind k) {
  switch (k) {
    case ErrorKind::Ok: return "Ok";
    case ErrorKind::NotFound: return "NotFound";
    case ErrorKind::Auth: return "Auth";
    case ErrorKind::Integrity: return "Integrity";
    case ErrorKind::Stream: return "Stream";
    case ErrorKind::Unreachable: return "Unreachable";
    case ErrorKind::Timeout: return "Timeout";
    case ErrorKind::Cancelled: return "Cancelled";
    case ErrorKind::NoMemory: return "NoMemory";
  }
  return "?";
}

struct Status {
  ErrorKind kind = ErrorKind::Ok;
  std::string message;

  static Status ok() { return {}; }
  static Status error(ErrorKind k, std::string m) { return {k, std::move(m)}; }
  explicit operator bool() const { return kind == ErrorKind::Ok; }
};

}  // namespace o3mount
