// Errors the core reports to its callers. Everything thrown across the core's public API is an
// o3::Error (torch's c10::Error is translated), so the binding needs no torch headers to catch it.
#pragma once

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace o3 {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A data file that cannot be read or decoded; the message always starts with the file's path.
inline Error fileError(const std::string& path, const std::string& what) { return Error(path + ": " + what); }

// A file that cannot be opened, with the system's reason: "No such file", or the
// "Transport endpoint is not connected" of a FUSE mount whose server died.
inline Error openError(const std::string& path) { return fileError(path, std::string("cannot open: ") + std::strerror(errno)); }

}  // namespace o3
