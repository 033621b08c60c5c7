"""What this computer's CPU can do natively, as the lab's "auto" precision rules see it.

One parser of /proc/cpuinfo for the whole lab (the benchmark reads it too), and the two variables that hold a run
to a lesser CPU than the one it is on, read as torch reads them:
- `ONEDNN_MAX_CPU_ISA` caps the instruction set of oneDNN, which runs the convolutions and matrix products;
- `ATEN_CPU_CAPABILITY` caps PyTorch's own vectorised kernels (`torch.backends.cpu.get_cpu_capability()`).
Both must be set before torch loads. A run held to AVX2 then decides as an AVX2-only CPU would.
Reads /proc/cpuinfo and the environment; writes nothing. Imports nothing of the lab.
"""

import os
from pathlib import Path

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
# oneDNN's names for ONEDNN_MAX_CPU_ISA, lowest first (oneDNN's dnnl_cpu_isa_t). From AVX512_CORE_BF16 on, oneDNN
# has bf16 dot-product instructions (AVX512-BF16, then AMX); below it, bf16 is emulated through fp32 and is slower.
ONEDNN_ISAS = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_FP16",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX512_CORE_AMX_FP16",
)
FIRST_NATIVE_BF16_ISA = "AVX512_CORE_BF16"
UNCAPPED = ("", "ALL", "DEFAULT")  # oneDNN's own words for "no cap"


def cpu_flags(cpuinfo=None):
    """The set of flags of the first processor in /proc/cpuinfo (an empty set where there is none: not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_features(cpuinfo=None):
    """{flag: present} for the instruction sets the precision rule and the benchmark's targets depend on."""
    flags = cpu_flags(cpuinfo)
    return {flag: flag in flags for flag in CPU_FLAGS}


def cpu_kind(features=None):
    """'amx', 'avx512_bf16' or 'avx2': the three kinds of CPU the lab's rule and targets tell apart (an AMX CPU also
    has AVX512-BF16). Anything without AVX512-BF16 counts as 'avx2': it has no native bf16."""
    features = cpu_features() if features is None else features
    if features["amx_bf16"]:
        return "amx"
    return "avx512_bf16" if features["avx512_bf16"] else "avx2"


def onednn_isa_cap(environ=None):
    """The ISA named by ONEDNN_MAX_CPU_ISA, upper-cased, or None when unset or uncapped. A name oneDNN does not know
    is ignored by oneDNN, and so here (None)."""
    value = (os.environ if environ is None else environ).get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return value if value in ONEDNN_ISAS else None


def aten_capability():
    """PyTorch's own kernels' instruction set: 'AVX512', 'AVX2', 'DEFAULT', ... (honours ATEN_CPU_CAPABILITY)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def native_cpu_bf16(features=None, environ=None, capability=None):
    """Whether bf16 arithmetic is native on this CPU as the run may use it: the CPU has AVX512-BF16 or AMX, oneDNN is
    not held below AVX512_CORE_BF16, and PyTorch's kernels are not held below AVX512. A fixed rule, no timing probe:
    a probe would let a busy machine choose differently from one run to the next."""
    features = cpu_features() if features is None else features
    if not (features["avx512_bf16"] or features["amx_bf16"]):
        return False
    cap = onednn_isa_cap(environ)
    if cap is not None and ONEDNN_ISAS.index(cap) < ONEDNN_ISAS.index(FIRST_NATIVE_BF16_ISA):
        return False
    capability = aten_capability() if capability is None else capability
    return capability.upper().startswith("AVX512")


def describe(features=None, environ=None):
    """One line for logs and the benchmark: the CPU kind, and the caps in force."""
    features = cpu_features() if features is None else features
    environ = os.environ if environ is None else environ
    caps = [f"{name}={environ[name]}" for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if environ.get(name)]
    held = f", held by {' and '.join(caps)}" if caps else ""
    return f"{cpu_kind(features)} CPU{held}: bf16 {'native' if native_cpu_bf16(features, environ) else 'not native'}"
