// policy_check: runs an exported policy from C++ (examples/cpp_policy/policy.h).
//   policy_check replay PACKAGE STEPS EXPECTED TOL   the steps of STEPS (per line: reset flag,
//       reward, observation...), each action compared with the line of EXPECTED (Python's
//       dmm.exported.ExportedPolicy on the same steps); exit 1 when one differs by more than TOL
//   policy_check bench PACKAGE N                     median microseconds of act() over N calls
//       (batch 1, one thread, random observations)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>

#include <ATen/Parallel.h>
#include <dmm_ops.h>

#include "policy.h"

namespace {

std::vector<std::vector<double>> read_rows(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::vector<std::vector<double>> rows;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::vector<double> row;
    for (double v; fields >> v;) row.push_back(v);
    if (!row.empty()) rows.push_back(std::move(row));
  }
  return rows;
}

int replay(const std::string& package, const std::string& steps_path,
           const std::string& expected_path, double tol) {
  dmm_example::Policy policy(package);
  const auto steps = read_rows(steps_path), expected = read_rows(expected_path);
  if (steps.size() != expected.size()) throw std::runtime_error("steps and expected differ in length");
  double worst = 0;
  for (size_t t = 0; t < steps.size(); ++t) {
    if (steps[t][0] != 0) policy.reset();
    std::vector<float> obs(steps[t].begin() + 2, steps[t].end());
    const auto action = policy.act(obs, static_cast<float>(steps[t][1]));
    if (action.size() != expected[t].size()) throw std::runtime_error("action width differs");
    for (size_t j = 0; j < action.size(); ++j) worst = std::max(worst, std::abs(action[j] - expected[t][j]));
  }
  std::cout << "policy_check: " << package << " (" << policy.mode() << ", " << policy.ops()
            << " ops): " << steps.size() << " actions, largest difference from Python " << worst
            << " (tolerance " << tol << ")" << std::endl;
  return worst <= tol ? 0 : 1;
}

int bench(const std::string& package, int n) {
  at::set_num_threads(1);
  dmm_example::Policy policy(package);
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  std::vector<float> obs(policy.state_dim());
  std::vector<double> us;
  for (int i = 0; i < n + 50; ++i) {
    if (i % 1000 == 0) policy.reset();  // episodes of 1000 steps, as MuJoCo's
    for (float& o : obs) o = normal(rng);
    const auto t0 = std::chrono::steady_clock::now();
    policy.act(obs, 1.0f);
    const auto t1 = std::chrono::steady_clock::now();
    if (i >= 50) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  std::nth_element(us.begin(), us.begin() + us.size() / 2, us.end());
  std::cout << "policy_check bench: " << package << " (" << policy.mode() << ", " << policy.ops()
            << " ops): median " << us[us.size() / 2] << " us per action over " << n << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // A reference to libdmm_ops, so the linker keeps it (its static initialisers register the dmm
  // ops that a package exported with --ops dmm calls).
  std::cerr << "policy_check: libdmm_ops " << dmm_ops_version() << std::endl;
  try {
    const std::string cmd = argc > 1 ? argv[1] : "";
    if (cmd == "replay" && argc == 6) return replay(argv[2], argv[3], argv[4], std::stod(argv[5]));
    if (cmd == "bench" && argc == 4) return bench(argv[2], std::stoi(argv[3]));
    std::cerr << "usage: policy_check replay PACKAGE STEPS EXPECTED TOL | bench PACKAGE N" << std::endl;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "policy_check: error: " << e.what() << std::endl;
    return 1;
  }
}
