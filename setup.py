"""Build the compiled core of lpla_fast.

The extension is a CUDAExtension when a CUDA toolkit (nvcc) is found and a CppExtension
otherwise; whether a GPU is present does not matter, so a CPU-only machine still compiles
the CUDA kernels.  Overrides: LPLA_FORCE_CPU=1, LPLA_FORCE_CUDA=1.
"""

import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def find_cuda_home():
    """The root of the CUDA toolkit, or None.

    The nvcc on PATH may be a wrapper script outside the toolkit (torch would then guess
    its parent folder and fail to link -lcudart), so look in this order: an explicit
    CUDA_HOME / CUDA_PATH, the conventional /usr/local/cuda, and what nvcc itself reports
    as its top folder.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        path = os.environ.get(var)
        if path and os.path.exists(os.path.join(path, "bin", "nvcc")):
            return os.path.realpath(path)
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return os.path.realpath("/usr/local/cuda")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "-dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        # nvcc -dryrun prints "#$ TOP=/usr/local/cuda-13.0/bin/.." among its variables.
        if "TOP=" in line:
            top = os.path.realpath(line.split("TOP=", 1)[1].strip())
            if os.path.exists(os.path.join(top, "bin", "nvcc")):
                return top
    return None


def build_extensions():
    # CUDA_HOME must be right before torch.utils.cpp_extension reads it at import time.
    cuda_home = None if _flag("LPLA_FORCE_CPU") else find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home
    if _flag("LPLA_FORCE_CUDA") and not cuda_home:
        sys.exit("LPLA_FORCE_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME to its root")

    from torch.utils import cpp_extension

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    with_cuda = bool(cuda_home) and bool(cuda_sources)
    # No -std flag: torch's BuildExtension picks the one its headers need (C++20 for recent torch).
    cxx_flags = ["-O3", "-fopenmp", "-Wno-psabi"]
    extra = {"cxx": cxx_flags}
    if with_cuda:
        # Without a GPU torch would compile for every architecture it knows; pick the
        # data-centre ones (A100, H100/H200) plus PTX so newer GPUs JIT from it.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        extra["nvcc"] = ["-O3", "--use_fast_math", "-lineinfo"]
        ext_cls = cpp_extension.CUDAExtension
        sources = sources + cuda_sources
    else:
        ext_cls = cpp_extension.CppExtension
    print(
        f"lpla_fast build: {'CUDA' if with_cuda else 'CPU-only'} extension"
        f" | CUDA_HOME={cuda_home} | arch={os.environ.get('TORCH_CUDA_ARCH_LIST', '-')}"
        f" | {len(sources)} sources",
        flush=True,
    )
    ext = ext_cls(
        name="lpla_fast._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = build_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
