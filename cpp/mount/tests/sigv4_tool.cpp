// Prints the URL and signed headers the fetch engine would send for one ranged GET, as JSON, at a
// fixed time: test/native-sigv4.test.ts compares them with the AWS SDK's own signer.
//   sigv4_tool --endpoint URL --region R --bucket B --key K --first N --last N --time EPOCH_SECONDS
//              [--etag E] [--version-id V]
// Credentials from O3_ACCESS_KEY_ID, O3_SECRET_ACCESS_KEY, O3_SESSION_TOKEN.
#include <chrono>
#include <iostream>

#include "mount/s3_request.h"
#include "mount/tests/tool_args.h"

using namespace o3mount;

int main(int argc, char** argv) {
  const tool::Args args(argc, argv);
  std::string why;
  const auto endpoint = parseEndpoint(args.need("endpoint"), why);
  if (!endpoint) tool::Args::usage(why);
  const SigV4Signer signer(tool::credentialsFromEnv(), args.need("region"));
  const ObjectPin pin{args.need("key"), args.get("etag"), args.get("version-id"), 0};
  const auto at = std::chrono::system_clock::time_point(std::chrono::seconds(args.number("time", 0)));
  const S3Request r = rangeGet(*endpoint, args.need("bucket"), pin, args.number("first", 0), args.number("last", 0), signer, at);
  std::cout << "{\"url\":" << tool::json(r.url) << ",\"headers\":{";
  for (size_t i = 0; i < r.headers.size(); i++) {
    std::cout << (i ? "," : "") << tool::json(r.headers[i].first) << ":" << tool::json(r.headers[i].second);
  }
  std::cout << "}}" << std::endl;
  return 0;
}
