// SigV4 against the worked example in AWS's S3 documentation ("Signature calculation: GET object",
// a ranged GET of examplebucket/test.txt on 2013-05-24), and S3's UriEncode on the bytes that differ
// between encoders: space, '+', '%', '~', '!', '*', non-ASCII; and the endpoint URLs requests are
// built on.
#include <chrono>

#include "mount/s3_request.h"
#include "mount/sigv4_signer.h"
#include "mount/tests/check.h"

using namespace o3mount;

namespace {

std::chrono::system_clock::time_point at(int y, int mo, int d) { return std::chrono::sys_days{std::chrono::year{y} / mo / d}; }

std::string header(const std::vector<Header>& hs, const std::string& name) {
  for (const Header& h : hs)
    if (h.first == name) return h.second;
  return "<absent>";
}

void awsDocumentationExample() {
  SigV4Signer signer({"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""}, "us-east-1");
  std::vector<Header> hs{{"host", "examplebucket.s3.amazonaws.com"}, {"range", "bytes=0-9"}};
  signer.sign("GET", "/test.txt", "", hs, at(2013, 5, 24));
  O3_CHECK_EQ(header(hs, "x-amz-date"), std::string("20130524T000000Z"));
  O3_CHECK_EQ(header(hs, "x-amz-content-sha256"), std::string(kEmptyBodySha256));
  O3_CHECK_EQ(header(hs, "authorization"),
              std::string("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
                          "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
                          "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"));
  O3_CHECK_EQ(header(hs, "x-amz-security-token"), std::string("<absent>"));
}

void sessionTokenIsSigned() {
  SigV4Signer signer({"AKID", "secret", "token/with+chars="}, "akave-network");
  std::vector<Header> hs{{"host", "127.0.0.1:8080"}};
  signer.sign("GET", "/b/k", "", hs, at(2026, 12, 4));
  O3_CHECK_EQ(header(hs, "x-amz-security-token"), std::string("token/with+chars="));
  O3_CHECK(header(hs, "authorization").find("SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,") !=
           std::string::npos);
}

void keyCachedPerDay() {
  // The same inputs on two days differ only through the date: the cached key must follow the date.
  SigV4Signer signer({"AKID", "secret", ""}, "r");
  std::vector<Header> a{{"host", "h"}}, b{{"host", "h"}}, c{{"host", "h"}};
  signer.sign("GET", "/b/k", "", a, at(2026, 1, 1));
  signer.sign("GET", "/b/k", "", b, at(2026, 1, 2));
  signer.sign("GET", "/b/k", "", c, at(2026, 1, 1));
  O3_CHECK(header(a, "authorization") != header(b, "authorization"));
  O3_CHECK_EQ(header(a, "authorization"), header(c, "authorization"));
}

void refreshedCredentialsSignFromThen() {
  // New temporary credentials the same day: the key cached for the day must not outlive the secret.
  SigV4Signer refreshed({"AKID-OLD", "old-secret", "old-token"}, "r");
  std::vector<Header> before{{"host", "h"}}, after{{"host", "h"}}, fresh{{"host", "h"}};
  refreshed.sign("GET", "/b/k", "", before, at(2026, 1, 1));
  refreshed.setCredentials({"AKID-NEW", "new-secret", "new-token"});
  refreshed.sign("GET", "/b/k", "", after, at(2026, 1, 1));
  SigV4Signer({"AKID-NEW", "new-secret", "new-token"}, "r").sign("GET", "/b/k", "", fresh, at(2026, 1, 1));
  O3_CHECK(header(before, "authorization").find("Credential=AKID-OLD/") != std::string::npos);
  O3_CHECK_EQ(header(after, "authorization"), header(fresh, "authorization"));
  O3_CHECK_EQ(header(after, "x-amz-security-token"), std::string("new-token"));
  // Credentials without a token after ones with it: no token header left over.
  refreshed.setCredentials({"AKID-STATIC", "static-secret", ""});
  std::vector<Header> none{{"host", "h"}};
  refreshed.sign("GET", "/b/k", "", none, at(2026, 1, 1));
  O3_CHECK_EQ(header(none, "x-amz-security-token"), std::string("<absent>"));
}

void uriEncoding() {
  O3_CHECK_EQ(uriEncode("a b+c%d~e_f-g.h/i", true), std::string("a%20b%2Bc%25d~e_f-g.h/i"));
  O3_CHECK_EQ(uriEncode("a/b", false), std::string("a%2Fb"));
  O3_CHECK_EQ(uriEncode("!*'()", true), std::string("%21%2A%27%28%29"));
  O3_CHECK_EQ(uriEncode("\xc3\xbc\xe2\x82\xac", true), std::string("%C3%BC%E2%82%AC"));
  O3_CHECK_EQ(uriEncode(std::string_view("\0x", 2), true), std::string("%00x"));
}

void endpointParsing() {
  std::string why;
  const auto parsed = [&](std::string_view url) {
    auto e = parseEndpoint(url, why);
    O3_CHECK(e.has_value());
    return e.value_or(Endpoint{});
  };
  Endpoint e = parsed("https://o3-rc2.akave.xyz/");
  O3_CHECK_EQ(e.host, std::string("o3-rc2.akave.xyz"));
  O3_CHECK_EQ(e.hostHeader, std::string("o3-rc2.akave.xyz"));
  e = parsed("https://127.0.0.1:8443/prefix");
  O3_CHECK_EQ(e.host, std::string("127.0.0.1"));
  O3_CHECK_EQ(e.hostHeader, std::string("127.0.0.1:8443"));
  O3_CHECK_EQ(e.pathPrefix, std::string("/prefix"));
  e = parsed("http://[::1]:80");
  O3_CHECK_EQ(e.host, std::string("::1"));
  O3_CHECK_EQ(e.hostHeader, std::string("[::1]"));
  O3_CHECK(!parseEndpoint("https://:443", why).has_value());
  O3_CHECK_EQ(why, std::string("the endpoint has no host"));
  O3_CHECK(!parseEndpoint("https:///prefix", why).has_value());
  O3_CHECK_EQ(why, std::string("the endpoint has no host"));
  O3_CHECK(!parseEndpoint("https://host:0", why).has_value());
  O3_CHECK(!parseEndpoint("ftp://host", why).has_value());
}

}  // namespace

int main() {
  awsDocumentationExample();
  sessionTokenIsSigned();
  keyCachedPerDay();
  refreshedCredentialsSignFromThen();
  uriEncoding();
  endpointParsing();
  return test::finish("sigv4_test");
}
