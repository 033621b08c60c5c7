"""The precision policy: in which dtype the frozen trunk's pass (`trunk_dtype`) and the head's training
(`head_dtype`) run for a precision setting ("auto", "fp32", "bf16", "fp16") and a device, and how checkpoints and
cache files name it (`PRECISIONS`, `precision_name`). "auto" takes bf16 only where the hardware has it natively
(`cpu_supports_bf16`: lab/hardware.py's rule, which stays torch-free for the benchmark). Reads and writes nothing.
"""

import torch

import lab
from lab import hardware


def cpu_supports_bf16():
    """bf16 pays off only where the CPU has native bf16 instructions (AVX512-BF16 or AMX) and the run is not held
    below them (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY); elsewhere oneDNN emulates it, slower than fp32."""
    return hardware.native_cpu_bf16()


def trunk_dtype(precision, device):
    """The autocast dtype of the frozen-trunk pass, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise lab.LabError("precision='fp16' is not supported on the CPU; use 'bf16', 'fp32' or 'auto'.")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def head_dtype(precision, device):
    """The autocast dtype of the head's training, or None for plain fp32: "auto" is bf16 where the hardware has
    it natively (the trunk's rule: a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), fp32 elsewhere. The
    weights and Adam's state stay fp32 either way; only the forward and backward passes run in bf16."""
    if precision == "fp32":
        return None
    if precision == "bf16" or (device.type == "cpu" and cpu_supports_bf16()):
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_name(dtype):
    """'fp32', 'bf16' or 'fp16': how checkpoints and cache files name the trunk pass's precision."""
    return next(name for name, d in PRECISIONS.items() if d == dtype)
