"""Build of the compiled extension kpod_ops._C (torch.ops.kpod.*).

The CPU kernels always build. Their row loops (csrc/cpu/per_capability/*.cpp) are compiled once per
instruction set, as ATen compiles its own kernels (CPU_CAPABILITY): DEFAULT (no vector flags) and, on
x86-64, AVX2 and AVX512; the extension picks one at run time (the variant torch itself runs, or the
one KPOD_CPU_CAPABILITY names), so one build is fast on every CPU whatever machine built it.
CUDA sources (csrc/cuda/*.cu plus their .cpp glue) are added when torch is a CUDA build and nvcc is
found, or when FORCE_CUDA=1 (which needs a CUDA build of torch).
Build with ``pip install --no-build-isolation -e .`` so the installed torch is used.
Environment: FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST (default "8.0;9.0"), MAX_JOBS, DEBUG=1.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


# Compiled once per instruction set into the namespace kpod::cpu::<CAPABILITY> (csrc/cpu/kce_cpu_dispatch.h).
PER_CAPABILITY_SOURCES = ["csrc/cpu/per_capability/kce_cpu_rows.cpp"]
_AVX2 = ["-mavx2", "-mfma", "-mf16c"]
# at::vec picks its specialisations from CPU_CAPABILITY_<X> (as ATen's own kernels do). Lowest first:
# the objects are linked in this order, so where two variants emit the same inline function (a
# std::vector method, say) the linker keeps the lowest variant's copy, which every CPU runs.
CPU_VARIANTS_X86 = [
    ("DEFAULT", []),
    ("AVX2", [*_AVX2, "-DCPU_CAPABILITY_AVX2"]),
    ("AVX512", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", *_AVX2, "-DCPU_CAPABILITY_AVX512"]),
]


def _is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def _cpu_variants() -> list[tuple[str, list[str]]]:
    return CPU_VARIANTS_X86 if _is_x86_64() else CPU_VARIANTS_X86[:1]


def _extensions():
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    debug = os.environ.get("DEBUG", "0") == "1"
    # torch >= 2.14's headers require C++20; older ones build with C++17
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    std = "-std=c++20" if (major, minor) >= (2, 14) else "-std=c++17"
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    # -Wno-psabi: GCC's note on every 32/64-byte vector passed by value (an ABI change of GCC 4.6)
    cxx += [std, "-fopenmp", "-DPy_LIMITED_API=0x03090000", "-Wno-psabi"]
    if _is_x86_64():
        cxx += ["-DKPOD_CPU_X86_VARIANTS"]  # the glue's table lists the AVX2 and AVX512 variants
    sources = ["csrc/kpod.cpp", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc/cpu/*.cpp")))]
    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    use_cuda = torch.version.cuda is not None and (force_cuda or (shutil.which("nvcc") is not None and torch.cuda.is_available()))
    if force_cuda and torch.version.cuda is None:
        raise RuntimeError("FORCE_CUDA=1 needs a CUDA build of torch; this torch is " + torch.__version__)
    libraries = ["gomp"]
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc/cuda/*.cu")))
        sources += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc/cuda/*.cpp")))
        nvcc = ["-O3", std, "--use_fast_math", "-lineinfo"] if not debug else ["-O0", "-g", "-G", std]
        return [
            CUDAExtension(
                "kpod_ops._C",
                sources,
                include_dirs=[os.path.join(ROOT, "csrc")],
                extra_compile_args={"cxx": cxx + ["-DKPOD_WITH_CUDA"], "nvcc": nvcc},
                libraries=libraries,
                py_limited_api=True,
            )
        ]
    return [
        CppExtension(
            "kpod_ops._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx},
            libraries=libraries,
            py_limited_api=True,
        )
    ]


def _build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    class BuildWithCpuVariants(BuildExtension):
        """torch's BuildExtension, plus the per-instruction-set objects of the CPU row loops.

        Each variant is compiled with the extension's own C++ flags (torch's included) plus its
        ``-DCPU_CAPABILITY=<X>`` and ``-m`` flags into a folder of its own, and linked after the
        extension's other objects, lowest variant first.
        """

        def build_extension(self, ext) -> None:
            args = ext.extra_compile_args
            base = list(args["cxx"] if isinstance(args, dict) else args)
            objects = []
            for capability, flags in _cpu_variants():
                objects += self.compiler.compile(
                    PER_CAPABILITY_SOURCES,
                    output_dir=os.path.join(self.build_temp, f"cpu_{capability.lower()}"),
                    macros=list(ext.define_macros or []),
                    include_dirs=list(ext.include_dirs or []),
                    debug=self.debug,
                    extra_postargs={"cxx": [*base, f"-DCPU_CAPABILITY={capability}", *flags]},
                    depends=list(ext.depends or []),
                )
            ext.extra_objects = [*objects, *(ext.extra_objects or [])]
            super().build_extension(ext)

    return BuildWithCpuVariants


def main() -> None:
    setup(
        ext_modules=_extensions(),
        cmdclass={"build_ext": _build_ext_class().with_options(no_python_abi_suffix=True)},
        options={"bdist_wheel": {"py_limited_api": "cp39"}},
    )


if __name__ == "__main__":
    main()
