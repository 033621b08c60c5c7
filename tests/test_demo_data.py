"""The demo generator (lab/demo_data.py): it writes only into a folder it made, replaces only its own folder, and
the random-trunk fallback belongs to the demo folder alone."""

import pytest
from conftest import run_script

import lab
from lab import config, demo_data


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_demo_generator_never_touches_a_folder_it_did_not_make(own_data):
    before = snapshot(own_data)
    result = run_script("-m", "lab.demo_data", f"--data_root={str(own_data)!r}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "always writes into" in result.stderr and "drop --data_root" in result.stderr
    with pytest.raises(lab.LabError, match=r"was not made by the lab \(lab/demo_data.py\)"):
        demo_data.generate(own_data)
    with pytest.raises(lab.LabError, match=r"was not made by the lab \(lab/demo_data.py\)"):
        demo_data.generate(own_data.parent)  # nor any folder above it
    assert snapshot(own_data) == before


def test_the_demo_generator_replaces_only_its_own_folder(tmp_path):
    root = demo_data.generate(tmp_path / "demo", counts={"chainthin": 2, "Retaria": 2})
    assert (root / demo_data.MARKER).is_file()
    again = demo_data.generate(root, counts={"chainthin": 3, "Retaria": 3})  # ours: replaced
    assert len(list((again / "chainthin").iterdir())) == 3 and not (tmp_path / "demo.partial").exists()


def test_the_random_trunk_fallback_is_for_the_demo_folder_alone(tmp_path):
    lookalike = config.load_config([f"--data_root={str(tmp_path / 'data' / 'demo')!r}"])
    assert not demo_data.is_demo_root(lookalike)
    assert demo_data.is_demo_root(config.load_config([f"--data_root={str(demo_data.DEMO_ROOT)!r}"]))
