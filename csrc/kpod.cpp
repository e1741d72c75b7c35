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
}
