#include <gtest/gtest.h>

#include <metro/error.hpp>
#include <metro/sb/sas.hpp>

namespace metro::sb {
namespace {

using std::chrono::seconds;
using std::chrono::system_clock;

const system_clock::time_point kExpiry{seconds(1700000000)};

TEST(UrlEncode, EncodesLikeEncodeURIComponent) {
  EXPECT_EQ(url_encode("sb://myns.servicebus.windows.net/queue1"),
            "sb%3A%2F%2Fmyns.servicebus.windows.net%2Fqueue1");
  EXPECT_EQ(url_encode("a b+c=d&e"), "a%20b%2Bc%3Dd%26e");
  EXPECT_EQ(url_encode("-_.!~*'()"), "-_.!~*'()");
  EXPECT_EQ(url_encode("\xC3\xA9"), "%C3%A9");
}

TEST(UrlDecode, DecodesAndRejectsBadEscapes) {
  EXPECT_EQ(url_decode("a%20b+c%2f"), "a b c/");
  EXPECT_EQ(url_decode("%"), std::nullopt);
  EXPECT_EQ(url_decode("%4"), std::nullopt);
  EXPECT_EQ(url_decode("%zz"), std::nullopt);
}

TEST(SasToken, HasTheFieldsInTheSdkOrder) {
  auto token = make_sas_token("sb://h/t", "RootManageSharedAccessKey", "SAS_KEY_VALUE", kExpiry);
  EXPECT_EQ(token.rfind("SharedAccessSignature sr=sb%3A%2F%2Fh%2Ft&sig=", 0), 0u) << token;
  EXPECT_NE(token.find("&se=1700000000&skn=RootManageSharedAccessKey"), std::string::npos);
}

TEST(SasToken, KnownAnswer) {
  // HMAC-SHA256("key", "sb%3A%2F%2Fh%2Ft\n1700000000"), computed independently with
  // `printf 'sb%%3A%%2F%%2Fh%%2Ft\n1700000000' | openssl dgst -sha256 -hmac key -binary | base64`.
  auto token = make_sas_token("sb://h/t", "k", "key", kExpiry);
  auto parsed = parse_sas_token(token);
  EXPECT_EQ(parsed.signature, "CxHrm8nkP3g6gAl7hQnfQZ+xXv11t959oWErbZv+LFE=");
}

TEST(SasToken, ParsesAndVerifies) {
  auto token = make_sas_token("sb://h/topic", "k", "secret", kExpiry);
  auto parsed = parse_sas_token(token);
  EXPECT_EQ(parsed.resource, "sb://h/topic");
  EXPECT_EQ(parsed.encoded_resource, "sb%3A%2F%2Fh%2Ftopic");
  EXPECT_EQ(parsed.key_name, "k");
  EXPECT_EQ(parsed.expiry, kExpiry);
  auto before = kExpiry - seconds(10);
  EXPECT_EQ(verify_sas_token(parsed, "secret", "sb://h/topic", before), std::nullopt);
  EXPECT_EQ(verify_sas_token(parsed, "secret", "sb://h/TOPIC/Subscriptions/s", before),
            std::nullopt);
  EXPECT_EQ(*verify_sas_token(parsed, "wrong", "sb://h/topic", before),
            "the token's signature does not match the key 'k'");
  EXPECT_EQ(*verify_sas_token(parsed, "secret", "sb://h/topic", kExpiry), "the token has expired");
  EXPECT_EQ(*verify_sas_token(parsed, "secret", "sb://h/topic2", before),
            "the token is for 'sb://h/topic', which does not cover 'sb://h/topic2'");
}

TEST(SasToken, NamespaceWideTokenCoversEveryEntity) {
  auto parsed = parse_sas_token(make_sas_token("sb://h/", "k", "secret", kExpiry));
  EXPECT_EQ(verify_sas_token(parsed, "secret", "sb://h/q1", kExpiry - seconds(1)), std::nullopt);
}

TEST(SasToken, RejectsMalformedTokens) {
  EXPECT_THROW(parse_sas_token("sr=a&sig=b&se=1&skn=k"), InvalidArgument);
  EXPECT_THROW(parse_sas_token("SharedAccessSignature sr=a&sig=b&se=1"), InvalidArgument);
  EXPECT_THROW(parse_sas_token("SharedAccessSignature sr=a&sig=b&se=x&skn=k"), InvalidArgument);
  EXPECT_THROW(parse_sas_token("SharedAccessSignature sr=%zz&sig=b&se=1&skn=k"), InvalidArgument);
  EXPECT_THROW(parse_sas_token("SharedAccessSignature sr"), InvalidArgument);
}

}  // namespace
}  // namespace metro::sb
