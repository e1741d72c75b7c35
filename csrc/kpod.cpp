// Schemas of the kpod ops (torch.ops.kpod.*). Kernels: csrc/cpu (CPU), csrc/cuda (CUDA).
// Semantics are documented in kpod_ops/losses/registration.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// A dummy module init so that `from kpod_ops import _C` loads the library (and registers the ops)
// with the limited Python API: no pybind11, one abi3 build per torch version.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(kpod, m) {
  m.def("kce_forward(Tensor logits, Tensor target, float label_smoothing) -> (Tensor nll, Tensor lse)");
  m.def(
      "kce_backward(Tensor logits, Tensor target, Tensor lse, Tensor grad_nll, Tensor grad_lse, "
      "float label_smoothing) -> Tensor");
  m.def(
      "kce_forward_backward(Tensor logits, Tensor target, Tensor row_scale, float label_smoothing) "
      "-> (Tensor nll, Tensor grad_logits)");
  m.def(
      "kce_forward_backward_inplace(Tensor(a!) logits, Tensor target, Tensor row_scale, "
      "float label_smoothing) -> Tensor nll");
  m.def(
      "kce_backward_inplace(Tensor(a!) logits, Tensor target, Tensor lse, Tensor grad_nll, Tensor grad_lse, "
      "float label_smoothing) -> ()");
  m.def("scale_(Tensor(a!) x, Tensor scale) -> ()");
  // the instruction-set variant of the CPU kernels (csrc/cpu/kce_cpu.cpp): the one that runs, why it
  // was chosen, those this CPU can run, and a private in-process override ("" = back to the default)
  m.def("cpu_capability() -> str");
  m.def("cpu_capability_source() -> str");
  m.def("cpu_capabilities() -> str[]");
  m.def("_set_cpu_capability(str name) -> str");
}
