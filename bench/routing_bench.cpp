// Routing cost per message: finding the subject in a JSON body and matching it against a
// subscription's handlers. Run: build/ci/bench/bench_routing (or script/bench).

#include <string>

#include <benchmark/benchmark.h>

#include <metro/routing/router.hpp>

namespace {

using metro::routing::MatchKind;
using metro::routing::Router;
using metro::routing::SubjectMatcher;

Router make_router(int handlers) {
  Router router;
  for (int i = 0; i < handlers; ++i) {
    auto n = std::to_string(i);
    switch (i % 3) {
      case 0:
        router.add(SubjectMatcher(MatchKind::kExact, "MetroDemo/Type/Exact" + n));
        break;
      case 1:
        router.add(SubjectMatcher(MatchKind::kRegex, "MetroDemo/Type/(Geek|Dad)Jokes" + n));
        break;
      default:
        router.add(SubjectMatcher(MatchKind::kGlob, "MetroDemo/**/Glob" + n));
    }
  }
  return router;
}

void BM_Route(benchmark::State& state) {
  auto router = make_router(static_cast<int>(state.range(0)));
  const std::string subject = "MetroDemo/Type/GeekJokes1";
  for (auto _ : state) benchmark::DoNotOptimize(router.route(subject));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Route)->Arg(1)->Arg(10)->Arg(100);

void BM_FindSubjectInBody(benchmark::State& state) {
  const std::string body =
      R"({"subject":"MetroDemo/Type/GeekJokes","joke":"Why do programmers prefer dark mode? )"
      R"(Because light attracts bugs.","id":12345,"tags":["geek","joke"]})";
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        metro::routing::find_subject(metro::routing::SubjectSource::kBody, body, std::nullopt));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_FindSubjectInBody);

}  // namespace

BENCHMARK_MAIN();
