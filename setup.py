"""Build of the compiled extension kpod_ops._C (torch.ops.kpod.*).

The CPU kernels always build. CUDA sources (csrc/cuda/*.cu plus their .cpp glue) are added when
torch is a CUDA build and nvcc is found, or when FORCE_CUDA=1 (which needs a CUDA build of torch).
Build with ``pip install --no-build-isolation -e .`` so the installed torch is used.
Environment: FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST (default "8.0;9.0"), MAX_JOBS, DEBUG=1,
KPOD_CPU_CAPABILITY=avx2|default (default: avx2 when this machine's CPU has AVX2 and FMA).
"""

from __future__ import annotations

import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags and " f16c" in flags


def _extensions():
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    debug = os.environ.get("DEBUG", "0") == "1"
    capability = os.environ.get("KPOD_CPU_CAPABILITY", "avx2" if _cpu_has_avx2() else "default")
    # torch >= 2.14's headers require C++20; older ones build with C++17
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    std = "-std=c++20" if (major, minor) >= (2, 14) else "-std=c++17"
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    cxx += [std, "-fopenmp", "-DPy_LIMITED_API=0x03090000"]
    if capability == "avx2":
        # at::vec picks its AVX2 specialisations from these macros (as ATen's own kernels do)
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
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


def main() -> None:
    from torch.utils.cpp_extension import BuildExtension

    setup(
        ext_modules=_extensions(),
        cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)},
        options={"bdist_wheel": {"py_limited_api": "cp39"}},
    )


if __name__ == "__main__":
    main()
