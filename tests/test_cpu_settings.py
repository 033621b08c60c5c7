"""The precision rule and the numerically sensitive tests, under the CPU settings this project's machines may have.

`ONEDNN_MAX_CPU_ISA` and `ATEN_CPU_CAPABILITY` hold oneDNN and PyTorch's own kernels to a lesser instruction set,
so one machine can behave as a lesser one. The "auto" precision rule must honour them (an AVX2-held run picks fp32,
as an AVX2-only CPU would), and the tests whose results depend on the arithmetic (torchrun equality, resume
equality, predict.py against evaluate.py) must pass under each setting. The machine's own setting is the suite
itself; the other two run the sensitive tests again here, in child pytest processes started with the variables set
(they must be set before torch loads).
"""

import os
import subprocess
import sys

import pytest
import torch

import lab
from lab import hardware, precision

HELD = {  # setting -> (environment, the precision "auto" must pick there)
    "avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}, "fp32"),
    "avx512_bf16": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "bf16"),
}
SENSITIVE = [
    "tests/test_cpu_settings.py::test_auto_precision_is_what_the_setting_allows",
    "tests/test_distributed.py::test_torchrun_trains_the_single_process_model_bit_for_bit",
    "tests/test_training.py::test_kill_9_then_resume_gives_the_uninterrupted_result",
    "tests/test_predict.py::test_predictions_equal_evaluates_on_the_test_images",
]
EXPECTED = "PLANKTON_LAB_EXPECTED_PRECISION"  # set by the parent test for its child run


def own_cpu_precision():
    """What "auto" must pick on this CPU left to itself: bf16 exactly where the CPU has bf16 instructions."""
    flags = hardware.cpu_flags()
    return "bf16" if {"avx512_bf16", "amx_bf16"} & flags else "fp32"


def test_auto_precision_is_what_the_setting_allows():
    expected = os.environ.get(EXPECTED, own_cpu_precision())
    cpu = torch.device("cpu")
    assert precision.precision_name(precision.trunk_dtype("auto", cpu)) == expected, hardware.describe()
    assert precision.precision_name(precision.head_dtype("auto", cpu)) == expected, hardware.describe()


@pytest.mark.parametrize(
    ("flags", "environ", "capability", "native"),
    [
        ({"avx2"}, {}, "AVX2", False),  # an AVX2-only CPU
        ({"avx2", "avx512f", "avx512_bf16"}, {}, "AVX512", True),  # AVX512-BF16, no AMX
        ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, {}, "AVX512", True),  # AMX
        ({"avx512_bf16", "amx_bf16"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "AVX512", False),  # oneDNN held to AVX2
        ({"avx512_bf16", "amx_bf16"}, {"ONEDNN_MAX_CPU_ISA": "avx512_core"}, "AVX512", False),
        ({"avx512_bf16", "amx_bf16"}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "AVX512", True),
        ({"avx512_bf16"}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, "AVX512", True),  # a cap above the CPU
        ({"avx512_bf16"}, {"ONEDNN_MAX_CPU_ISA": "ALL"}, "AVX512", True),
        ({"avx512_bf16"}, {"ONEDNN_MAX_CPU_ISA": "nonsense"}, "AVX512", True),  # oneDNN ignores it too
        ({"avx512_bf16"}, {}, "AVX2", False),  # ATEN_CPU_CAPABILITY=avx2
        ({"avx512_bf16"}, {}, "DEFAULT", False),
    ],
)
def test_native_bf16_rule(flags, environ, capability, native):
    features = {flag: flag in flags for flag in hardware.CPU_FLAGS}
    assert hardware.native_cpu_bf16(features, environ, capability) is native


def test_one_cpuinfo_parser_reads_the_first_processors_flags():
    text = "processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n"
    assert hardware.cpu_flags(text) == {"fpu", "avx2", "avx512_bf16"}
    assert hardware.cpu_kind(hardware.cpu_features(text)) == "avx512_bf16"
    assert hardware.cpu_flags("") == set() and hardware.cpu_kind(hardware.cpu_features("")) == "avx2"


@pytest.mark.slow
@pytest.mark.parametrize("setting", sorted(HELD))
def test_sensitive_tests_pass_on_a_cpu_held_to(setting):
    environ, expected = HELD[setting]
    if setting == "avx512_bf16" and own_cpu_precision() != "bf16":
        pytest.skip("this CPU has no AVX512-BF16: it cannot be held to it (the avx2 setting runs everywhere)")
    env = {**os.environ, **environ, EXPECTED: expected}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SENSITIVE],
        cwd=lab.ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"under {environ}:\n{result.stdout[-4000:]}"
    summary = result.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary, summary  # every sensitive test ran, none skipped


# --------------------------------------------------------------------------- the head's threads (issue 30)
@pytest.mark.parametrize(("threads", "setting", "expected"), [(1, "auto", {1}), (2, 1, {1}), (2, "auto", {1, 2})])
def test_the_head_trains_on_its_setting_and_gives_torch_its_thread_count_back(
    threads, setting, expected, make_cfg, monkeypatch
):
    """The head's batches run on the setting cpu_threads (docs/performance.md, "The head under load"): a number
    fixes the count; "auto" times one thread and torch's count (both run) where torch has two. After training,
    torch has the count it had (the stages after it in run_pipeline.py compute as they do alone), as
    torch_threads_kept does for the map."""
    import train
    from lab import thread_choice

    seen = []
    record = thread_choice.ThreadChoice.record

    def counting(self, kind, count, seconds, images):
        seen.append((count, torch.get_num_threads()))
        return record(self, kind, count, seconds, images)

    monkeypatch.setattr(thread_choice.ThreadChoice, "record", counting)
    monkeypatch.setattr(thread_choice, "_made", {})  # no choice made by an earlier test in this process
    _, argv = make_cfg(f"--cpu_threads={setting!r}", "--epochs=2", "--batch_size=8")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        train.main(argv)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert {count for count, _ in seen} == expected
    assert all(count == running for count, running in seen)  # each batch ran on the count it was recorded under
