// libdmm_ops, the dmm operator library for C++ programs (no Python): linking it registers every
// torch.ops.dmm.* schema and its CPU kernels with the dispatcher (static initialisers), which is
// what an AOTInductor package exported with the dmm ops calls into.
//
//   find_package(dmm_ops REQUIRED)            # after find_package(Torch)
//   target_link_libraries(app PRIVATE dmm::dmm_ops)
//
// Call dmm_ops_version() once (e.g. at start-up): a program that references no symbol of the library
// can have it dropped by the linker (--as-needed), and then no op is registered.
#pragma once

// Kept equal to pyproject.toml's version (tests/test_build.py checks).
#define DMM_OPS_VERSION "0.1.0"

extern "C" const char* dmm_ops_version();
