#include <gtest/gtest.h>

#include <metro/error.hpp>
#include <metro/routing/router.hpp>

namespace metro::routing {
namespace {

using Status = SubjectLookup::Status;

TEST(Exact, MatchesTheWholeSubjectCaseSensitively) {
  SubjectMatcher m(MatchKind::kExact, "MetroDemo/Type/GeekJokes");
  EXPECT_TRUE(m.matches("MetroDemo/Type/GeekJokes"));
  EXPECT_FALSE(m.matches("metrodemo/type/geekjokes"));
  EXPECT_FALSE(m.matches("MetroDemo/Type/GeekJokes/More"));
}

TEST(Regex, MatchesTheWholeSubject) {
  SubjectMatcher m(MatchKind::kRegex, "MetroDemo/Type/(Geek|Dad)Jokes");
  EXPECT_TRUE(m.matches("MetroDemo/Type/DadJokes"));
  EXPECT_FALSE(m.matches("xMetroDemo/Type/DadJokes"));
  EXPECT_FALSE(m.matches("MetroDemo/Type/DadJokesx"));
}

TEST(Regex, ReportsPatternsThatDoNotCompile) {
  try {
    SubjectMatcher m(MatchKind::kRegex, "Metro(");
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(std::string(e.what()), "invalid regex 'Metro(': missing ): Metro(");
  }
  // Backreferences would need backtracking; RE2 refuses them, which keeps matching linear.
  EXPECT_THROW(SubjectMatcher(MatchKind::kRegex, "(a)\\1"), InvalidArgument);
}

TEST(Glob, TranslatesToAnchoredRegex) {
  EXPECT_EQ(glob_to_regex("a/*/c"), "a\\/[^/]*\\/c");
  EXPECT_EQ(glob_to_regex("a/**"), "a\\/.*");
  EXPECT_EQ(glob_to_regex("**/c"), "(?:.*/)?c");
  EXPECT_EQ(glob_to_regex("a.b?"), "a\\.b[^/]");
}

struct GlobCase {
  const char* pattern;
  const char* subject;
  bool matches;
};

class GlobMatching : public ::testing::TestWithParam<GlobCase> {};

TEST_P(GlobMatching, FollowsSegmentRules) {
  SubjectMatcher m(MatchKind::kGlob, GetParam().pattern);
  EXPECT_EQ(m.matches(GetParam().subject), GetParam().matches)
      << GetParam().pattern << " vs " << GetParam().subject;
}

INSTANTIATE_TEST_SUITE_P(
    All, GlobMatching,
    ::testing::Values(GlobCase{"MetroDemo/Type/*", "MetroDemo/Type/GeekJokes", true},
                      GlobCase{"MetroDemo/Type/*", "MetroDemo/Type/Geek/Jokes", false},
                      GlobCase{"MetroDemo/**", "MetroDemo/Type/Geek/Jokes", true},
                      GlobCase{"MetroDemo/**/Jokes", "MetroDemo/Jokes", true},
                      GlobCase{"MetroDemo/**/Jokes", "MetroDemo/a/b/Jokes", true},
                      GlobCase{"MetroDemo/**/Jokes", "MetroDemo/a/bJokes", false},
                      GlobCase{"*/Type/*", "MetroDemo/Type/X", true},
                      GlobCase{"Metro?emo/*", "MetroDemo/X", true},
                      GlobCase{"Metro?emo/*", "Metro/emo/X", false}, GlobCase{"a.b", "axb", false},
                      GlobCase{"a+(b)", "a+(b)", true}, GlobCase{"*", "", true}),
    [](const auto& p) { return "case" + std::to_string(p.index); });

TEST(Router, FansOutInConfigOrder) {
  Router router;
  router.add(SubjectMatcher(MatchKind::kGlob, "MetroDemo/**"));
  router.add(SubjectMatcher(MatchKind::kExact, "Other"));
  router.add(SubjectMatcher(MatchKind::kExact, "MetroDemo/Type/GeekJokes"));
  router.add(SubjectMatcher(MatchKind::kRegex, ".*Jokes"));
  EXPECT_EQ(router.route("MetroDemo/Type/GeekJokes"), (std::vector<std::size_t>{0, 2, 3}));
  EXPECT_EQ(router.route("Other"), (std::vector<std::size_t>{1}));
  EXPECT_TRUE(router.route("Nothing").empty());
}

TEST(SubjectSource, ParsesItsNames) {
  EXPECT_EQ(subject_source_from_string("body"), SubjectSource::kBody);
  EXPECT_EQ(subject_source_from_string("property"), SubjectSource::kProperty);
  EXPECT_EQ(subject_source_from_string("body-then-property"), SubjectSource::kBodyThenProperty);
  EXPECT_EQ(subject_source_from_string("Body"), std::nullopt);
  for (auto s :
       {SubjectSource::kBody, SubjectSource::kProperty, SubjectSource::kBodyThenProperty}) {
    EXPECT_EQ(subject_source_from_string(to_string(s)), s);
  }
}

TEST(FindSubject, ReadsTheBodyField) {
  auto r = find_subject(SubjectSource::kBody, R"({"subject":"A/B","joke":"x"})", "Prop");
  EXPECT_EQ(r.status, Status::kFound);
  EXPECT_EQ(r.subject, "A/B");
}

TEST(FindSubject, ReadsTheProperty) {
  auto r = find_subject(SubjectSource::kProperty, "not json at all", "Prop");
  EXPECT_EQ(r.status, Status::kFound);
  EXPECT_EQ(r.subject, "Prop");
  EXPECT_EQ(find_subject(SubjectSource::kProperty, "{}", std::nullopt).status, Status::kMissing);
}

TEST(FindSubject, FallsBackToThePropertyWhenTheBodyHasNone) {
  auto r = find_subject(SubjectSource::kBodyThenProperty, R"({"x":1})", "Prop");
  EXPECT_EQ(r.status, Status::kFound);
  EXPECT_EQ(r.subject, "Prop");
  r = find_subject(SubjectSource::kBodyThenProperty, R"({"subject":"Body"})", "Prop");
  EXPECT_EQ(r.subject, "Body");
  r = find_subject(SubjectSource::kBodyThenProperty, R"([1])", std::nullopt);
  EXPECT_EQ(r.status, Status::kMissing);
  EXPECT_EQ(r.problem, "the JSON body is not an object, and the message has no subject property");
}

TEST(FindSubject, SaysWhyThereIsNone) {
  auto r = find_subject(SubjectSource::kBody, R"({"subject":42})", std::nullopt);
  EXPECT_EQ(r.status, Status::kMissing);
  EXPECT_EQ(r.problem, "the JSON body's \"subject\" is a number, not a string");
  r = find_subject(SubjectSource::kBody, R"({"x":1})", std::nullopt);
  EXPECT_EQ(r.problem, "the JSON body has no \"subject\" field");
}

TEST(FindSubject, FlagsAMalformedBody) {
  auto r = find_subject(SubjectSource::kBody, "{\"subject\": ", std::nullopt);
  EXPECT_EQ(r.status, Status::kMalformedBody);
  EXPECT_NE(r.problem.find("the body is not JSON"), std::string::npos) << r.problem;
  EXPECT_NE(r.problem.find("line 1"), std::string::npos) << r.problem;
  // A number JSON cannot hold is malformed too (found by fuzz_subject_matcher).
  r = find_subject(SubjectSource::kBody, R"({"subject":"a","n":1E4444})", std::nullopt);
  EXPECT_EQ(r.status, Status::kMalformedBody);
  EXPECT_NE(r.problem.find("number overflow"), std::string::npos) << r.problem;
}

}  // namespace
}  // namespace metro::routing
