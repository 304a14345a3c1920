// The Python module stub of dmm_kernels._C: `import dmm_kernels._C` loads this shared object, and
// the static initialisers of the op sources linked into it (csrc/ops.cpp, csrc/cpu, csrc/block,
// csrc/cuda) register torch.ops.dmm.*. Only the Python extension (setup.py) compiles this file; the
// C++ library libdmm_ops (CMakeLists.txt) leaves it out, so it has no Python symbols.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
