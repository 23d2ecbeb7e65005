#include <gtest/gtest.h>

#include <metro/error.hpp>
#include <metro/sb/connection_string.hpp>

namespace metro::sb {
namespace {

constexpr const char* kEmulator =
    "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;"
    "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;";

TEST(ConnectionString, ParsesTheEmulatorString) {
  auto cs = parse_connection_string(kEmulator);
  EXPECT_EQ(cs.host, "localhost");
  EXPECT_EQ(cs.port, 5672);
  EXPECT_FALSE(cs.use_tls);
  EXPECT_TRUE(cs.use_development_emulator);
  EXPECT_EQ(cs.shared_access_key_name, "RootManageSharedAccessKey");
  EXPECT_EQ(cs.shared_access_key, "SAS_KEY_VALUE");
  EXPECT_EQ(cs.audience_base(), "sb://localhost/");
}

TEST(ConnectionString, ParsesACloudStringWithEntityPathAndBase64Key) {
  auto cs = parse_connection_string(
      "Endpoint=sb://myns.servicebus.windows.net/;SharedAccessKeyName=p;"
      "SharedAccessKey=abc+def/ghi==;EntityPath=orders");
  EXPECT_EQ(cs.host, "myns.servicebus.windows.net");
  EXPECT_EQ(cs.port, 5671);
  EXPECT_TRUE(cs.use_tls);
  EXPECT_EQ(cs.shared_access_key, "abc+def/ghi==");  // split at the first '=' only
  EXPECT_EQ(cs.entity_path, "orders");
  EXPECT_EQ(cs.audience("orders"), "sb://myns.servicebus.windows.net/orders");
}

TEST(ConnectionString, KeepsAnExplicitPortInTheAudience) {
  auto cs = parse_connection_string(
      "Endpoint=sb://localhost:5673;SharedAccessKeyName=k;SharedAccessKey=v;"
      "UseDevelopmentEmulator=true");
  EXPECT_EQ(cs.port, 5673);
  EXPECT_EQ(cs.audience("q1"), "sb://localhost:5673/q1");
}

TEST(ConnectionString, KeyNamesAreCaseInsensitiveAndWhitespaceIsTrimmed) {
  auto cs = parse_connection_string(
      " endpoint = sb://h.example ; sharedaccesskeyname=k;SHAREDACCESSKEY=v "
      ";useDevelopmentEmulator=TRUE");
  EXPECT_EQ(cs.host, "h.example");
  EXPECT_EQ(cs.shared_access_key, "v");
  EXPECT_TRUE(cs.use_development_emulator);
}

TEST(ConnectionString, AcceptsASharedAccessSignature) {
  auto cs = parse_connection_string(
      "Endpoint=sb://h/;SharedAccessSignature=SharedAccessSignature sr=a&sig=b%3D&se=1&skn=k");
  EXPECT_FALSE(cs.has_key());
  EXPECT_EQ(cs.shared_access_signature, "SharedAccessSignature sr=a&sig=b%3D&se=1&skn=k");
}

TEST(ConnectionString, IgnoresUnknownKeys) {
  EXPECT_NO_THROW(parse_connection_string(
      "Endpoint=sb://h/;SharedAccessKeyName=k;SharedAccessKey=v;TransportType=Amqp"));
}

struct BadString {
  const char* text;
  const char* message;
};

class ConnectionStringErrors : public ::testing::TestWithParam<BadString> {};

TEST_P(ConnectionStringErrors, NamesTheProblemWithoutTheSecret) {
  try {
    parse_connection_string(GetParam().text);
    FAIL() << "parsed: " << GetParam().text;
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(std::string(e.what()), GetParam().message);
    EXPECT_EQ(std::string(e.what()).find("s3cret"), std::string::npos);
  }
}

INSTANTIATE_TEST_SUITE_P(
    All, ConnectionStringErrors,
    ::testing::Values(
        BadString{"", "connection string is empty"},
        BadString{"SharedAccessKeyName=k;SharedAccessKey=s3cret",
                  "connection string has no Endpoint"},
        BadString{"Endpoint=http://h/;SharedAccessKeyName=k;SharedAccessKey=s3cret",
                  "Endpoint must start with sb:// (got 'http://h/')"},
        BadString{"Endpoint=sb://h:99999/;SharedAccessKeyName=k;SharedAccessKey=s3cret",
                  "Endpoint has an invalid port '99999'"},
        BadString{"Endpoint=sb:///;SharedAccessKeyName=k;SharedAccessKey=s3cret",
                  "Endpoint has no host name"},
        BadString{"Endpoint=sb://h/;SharedAccessKey=s3cret",
                  "SharedAccessKeyName and SharedAccessKey must be given together (found only "
                  "SharedAccessKey)"},
        BadString{"Endpoint=sb://h/;SharedAccessKeyName=k;SharedAccessKey=s3cret;"
                  "SharedAccessSignature=SharedAccessSignature sr=x",
                  "SharedAccessSignature and SharedAccessKey are mutually exclusive"},
        BadString{"Endpoint=sb://h/",
                  "connection string has no credentials (SharedAccessKeyName + SharedAccessKey, "
                  "or SharedAccessSignature)"},
        BadString{"Endpoint=sb://h/;SharedAccessKeyName=k;SharedAccessKey=s3cret;"
                  "UseDevelopmentEmulator=yes",
                  "UseDevelopmentEmulator must be true or false (got 'yes')"},
        BadString{"Endpoint;SharedAccessKeyName=k;SharedAccessKey=s3cret",
                  "'Endpoint' has no value (expected Key=Value)"}),
    [](const auto& p) { return "case" + std::to_string(p.index); });

TEST(Redaction, HidesKeysSignaturesAndTokenSignatures) {
  EXPECT_EQ(redact_connection_string(kEmulator),
            "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;"
            "SharedAccessKey=***;UseDevelopmentEmulator=true;");
  EXPECT_EQ(redact_connection_string("Endpoint=sb://h/;SharedAccessSignature=SharedAccessSignature "
                                     "sr=a&sig=b&se=1;EntityPath=t"),
            "Endpoint=sb://h/;SharedAccessSignature=***;EntityPath=t");
  EXPECT_EQ(redact_connection_string("token SharedAccessSignature sr=a&sig=abc%3D&se=1&skn=k"),
            "token SharedAccessSignature sr=a&sig=***&se=1&skn=k");
  EXPECT_EQ(redact_connection_string("bad: \"x;sharedaccesskey=s3cret\" here\nnext;more"),
            "bad: \"x;sharedaccesskey=***;more");
  EXPECT_EQ(redact_connection_string("no secrets here"), "no secrets here");
  // Spelled as the parser accepts it: any case, blanks around '='; quotes are part of the value.
  EXPECT_EQ(redact_connection_string("Endpoint=sb://h/; sharedaccesskey = s3cret ;x=1"),
            "Endpoint=sb://h/; sharedaccesskey = ***;x=1");
  EXPECT_EQ(redact_connection_string("SharedAccessKey='quoted';a=b"), "SharedAccessKey=***;a=b");
  EXPECT_EQ(redact_connection_string("SharedAccessKey=''x;SharedAccessKey='y"),
            "SharedAccessKey=***;SharedAccessKey=***");
}

}  // namespace
}  // namespace metro::sb
