"""A script's entry point (lab/runtime.py's run_main): an unexpected error shows its traceback, an error the user
can fix is one paragraph without one."""

import subprocess
import sys

import pytest
from conftest import run_script

import lab


@pytest.mark.slow
def test_unexpected_errors_show_their_traceback_and_user_errors_one_paragraph(tmp_path):
    code = "from lab import runtime; runtime.run_main(lambda: {}['missing'])"
    result = subprocess.run([sys.executable, "-c", code], cwd=lab.ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "KeyError: 'missing'" in result.stderr
    assert "error: unexpected failure" in result.stderr
    user = run_script("evaluate.py", f"--output_dir={str(tmp_path)!r}")
    assert user.returncode == 2 and "Traceback" not in user.stderr and "python train.py" in user.stderr
