"""Native CPU kernels: C++ sources in ``optkernels/native/``, built on first use with the C++
compiler ``torch.compile`` uses on CPU, loaded with :mod:`ctypes`.

Why not ``torch.compile`` here: the low-precision Adam step (``native/adam_low_precision.cpp``)
reinterprets float32 bits as integers and back (fp8 codes, stochastic rounding), and torch
2.13's inductor emits scalar loops for those casts; compiled, the 8-bit step ran 4.9x torch's
fused fp32 AdamW on GPT-2's shapes, most of it compute. The same rule as one C++ loop, which
the compiler vectorizes, is one pass over memory. It has no torch headers (it takes data
pointers), so it builds in about a second, and needs nothing beyond what inductor needs.

The library is built once per source, flags, compiler and CPU, into ``OPTKERNELS_CACHE_DIR``
(default ``$XDG_CACHE_HOME/optkernels`` or ``~/.cache/optkernels``). Where it cannot be built
(no compiler, another platform), :func:`library` returns ``None`` after one warning and the
callers run their ``torch.compile`` rule instead: the same numbers to rounding, slower.
"""

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCES = Path(__file__).parent / "native"
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-std=c++17", "-shared", "-fPIC", "-fopenmp",
         # no fused multiply-adds (the rule's float32 rounding, as inductor compiles it); no errno
         # and no floating-point traps (neither changes a result), so that the loops vectorize
         "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math")
DISABLE = "OPTKERNELS_DISABLE_NATIVE"
"""Set this environment variable (to anything but ``0`` or empty) to build and use no native
kernel: ``compiled=True`` then runs the ``torch.compile`` rules everywhere."""


class AdamOptions(ctypes.Structure):
    """``Options`` of ``native/adam_low_precision.cpp``, field for field."""

    _fields_ = [(name, ctypes.c_float) for name in (
        "one_minus_beta1", "beta2", "one_minus_beta2", "eps", "step_size", "grad_step_size",
        "rsqrt_bias_correction2", "grad_decay", "param_factor")] + [(name, ctypes.c_int32) for name in (
            "negate", "decays_grad", "threads")] + [(name, ctypes.c_uint32) for name in ("key_moments", "key_param")]


def _compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _fingerprint(compiler: str, source: bytes, flags: tuple[str, ...]) -> str:
    """What the built library depends on: the source, the flags, the compiler and the CPU
    (``-march=native``)."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    cpu = " ".join(cpu_flags())
    digest = hashlib.sha256()
    for part in (source, " ".join(flags).encode(), compiler.encode(), version.encode(), cpu.encode(),
                 platform.machine().encode()):
        digest.update(part)
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def cpu_flags() -> list[str]:
    """The CPU's feature flags as ``/proc/cpuinfo`` lists them (``-march=native`` builds for
    them), or none where there is no such file."""
    if not os.path.exists("/proc/cpuinfo"):
        return []
    with open("/proc/cpuinfo") as cpuinfo:
        return next((line for line in cpuinfo if line.startswith("flags")), "").split()[2:]


def _cache_dir() -> Path:
    if os.environ.get("OPTKERNELS_CACHE_DIR"):
        return Path(os.environ["OPTKERNELS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "optkernels"


def library(name: str, **macros: int) -> ctypes.CDLL | None:
    """``native/<name>.cpp`` built with ``macros`` defined (``-DNAME=value``: the variant) and
    loaded, or ``None``: where :data:`DISABLE` is set (read at each call), or (after one warning)
    where it cannot be built or loaded."""
    if os.environ.get(DISABLE, "0") not in ("", "0"):
        return None
    return _library(name, tuple(sorted(macros.items())))


@functools.cache
def _library(name: str, macros: tuple[tuple[str, int], ...]) -> ctypes.CDLL | None:
    if platform.system() != "Linux":
        return None
    try:
        compiler = _compiler()
        if compiler is None:
            raise RuntimeError("no C++ compiler found (set CXX)")
        source = (SOURCES / f"{name}.cpp").read_bytes()
        flags = (*FLAGS, *(f"-D{macro}={int(value)}" for macro, value in macros))
        target = _cache_dir() / f"{name}-{_fingerprint(compiler, source, flags)}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # built beside the target and renamed: processes building at once never load half a file
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                built = Path(scratch) / target.name
                result = subprocess.run([compiler, *flags, str(SOURCES / f"{name}.cpp"), "-o", str(built)],
                                        capture_output=True, text=True, check=False)
                if result.returncode != 0:
                    raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
                os.replace(built, target)
        return ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(f"optkernels: the native kernel {name!r} could not be built or loaded ({error}); "
                      "compiled=True runs its torch.compile rule instead (same results, slower)",
                      RuntimeWarning, stacklevel=3)
        return None


def threads() -> int:
    """The threads a native kernel uses: torch's intra-op count."""
    return torch.get_num_threads()
