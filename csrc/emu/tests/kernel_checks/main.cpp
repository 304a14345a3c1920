// The real kernels of csrc/cuda (selective_scan.cuh, modal_mix.cuh, block_kernels.cuh,
// step_kernels.cuh), compiled as host C++ by the emulator without torch, run against naive float64
// references under several schedule seeds, with the emulator's race check on.
//
// CMake builds the checks once with the unchanged headers (ctest `kernel_checks.*`: must pass, also
// under ASan / UBSan) and, per deliberately broken copy of a header, the checks of that header again
// (ctest `fault.*`, linked with the other three compiled once). Each fault must be reported under
// every seed: an emulator error or a MISMATCH line that the test's regular expression finds.
//
//   kernel_checks NAME [--expect REGEX]
//     NAME: scan_fwd | scan_bwd | block_scan | scan_half | conv_fwd | conv_bwd | block_ln |
//           step_half
//     Without --expect: exit 0 when every result matches under every seed. With it (the fault
//     tests): exit 0 when under every seed the run failed with an emulator error or a MISMATCH
//     line that REGEX (ECMAScript) finds.
#include <cstdio>
#include <map>
#include <regex>
#include <string>

#include "checks.h"

namespace kernel_checks {
namespace {
std::map<uint64_t, std::string> g_failures;  // per seed: errors and MISMATCH lines
bool g_ok = true;
}  // namespace

void failed(uint64_t seed, const std::string& what) {
  g_failures[seed] += what + " | ";
  g_ok = false;
}

void report(const std::string& what, uint64_t seed, double err, double tol, const char* measure) {
  char line[512];
  std::snprintf(line, sizeof line, "%s seed %llu: %s %.3g%s", what.c_str(), (unsigned long long)seed,
                measure, err, err <= tol ? "" : "  MISMATCH");
  std::printf("%s\n", line);
  if (!(err <= tol)) failed(seed, line);
}

void compare(const std::string& what, uint64_t seed, const std::vector<double>& got,
             const std::vector<double>& want, double tol) {
  double err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(got[i] - want[i]) / (1.0 + std::fabs(want[i]));
    if (!(e <= err)) err = e;
  }
  report(what, seed, err, tol, "max rel error");
}

}  // namespace kernel_checks

int main(int argc, char** argv) {
  using namespace kernel_checks;
  const std::map<std::string, void (*)()> checks = {
      {"scan_fwd", scan_fwd},     {"scan_bwd", scan_bwd},     {"conv_fwd", conv_fwd},
      {"conv_bwd", conv_bwd},     {"block_ln", block_ln},     {"block_scan", block_scan},
      {"step_half", step_half},   {"scan_half", scan_half}};
  const std::string name = argc > 1 ? argv[1] : "";
  const bool expect = argc > 3 && std::string(argv[2]) == "--expect";
  const auto it = checks.find(name);
  if (it == checks.end()) {
    std::fprintf(stderr, "usage: %s NAME [--expect REGEX]; NAME one of:", argv[0]);
    for (const auto& [n, f] : checks) std::fprintf(stderr, " %s", n.c_str());
    std::fprintf(stderr, "\n");
    return 2;
  }
  dmm::emu::set_racecheck(true);
  it->second();
  if (!expect) {
    std::printf("%s: %s\n", name.c_str(), g_ok ? "ok" : "FAILED");
    return g_ok ? 0 : 1;
  }
  const std::regex re(argv[3]);
  bool all = true;
  for (uint64_t seed : kSeeds) {
    const bool hit = std::regex_search(g_failures[seed], re);
    std::printf("seed %llu: %s\n", (unsigned long long)seed,
                hit ? "reported as expected" : "NOT reported as expected");
    all = all && hit;
  }
  std::printf("%s: the fault is %s under every seed\n", name.c_str(), all ? "reported" : "NOT reported");
  return all ? 0 : 1;
}
