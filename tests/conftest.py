"""Shared fixtures: a tiny demo data set, configs pointing at temporary folders, an offline TORCH_HOME."""

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tests never touch the user's torch cache, and never download anything.
TEST_TORCH_HOME = Path(os.environ.get("TMPDIR", "/tmp")) / f"plankton-lab-tests-torch-{os.getpid()}"
os.environ.setdefault("TORCH_HOME", str(TEST_TORCH_HOME))

# The tests run on the mission's settings, never on what a student put in configfile.py (inherited by the
# scripts the tests start as subprocesses).
MISSION_CONFIG = ROOT / "tests" / "mission_config.py"
os.environ["PLANKTON_LAB_CONFIG"] = str(MISSION_CONFIG)

# scikit-learn asks joblib's loky for the number of physical cores, which it finds with a subprocess (lscpu) once
# per process: asked here, before any test, so that the subprocess guard below never sees it.
from joblib.externals.loky import cpu_count  # noqa: E402

cpu_count(only_physical_cores=True)

import lab  # noqa: E402
from lab import artifacts, config, demo_data, output_lock  # noqa: E402

TINY_COUNTS = {c: 36 for c in demo_data.CLASSES}
# ../shared/data/ndsb9's roles, as its README gives them: 6 seen classes and 3 unseen.
NDSB9_SEEN = [
    "diatom_chain_string",
    "protist_noctiluca",
    "acantharia_protist",
    "copepod_cyclopoid_oithona",
    "chaetognath_sagitta",
    "hydromedusae_solmaris",
]
NDSB9_UNSEEN = ["diatom_chain_tube", "trichodesmium_tuft", "radiolarian_colony"]
# Small images and a random trunk keep every test fast; the architecture is the mission's.
FAST = [
    "--backbone_weights=None",
    "--image_size=64",
    "--num_workers=0",
    "--cpu_threads=1",  # "auto" picks a count by timing it: results could differ run to run outside make's 1 thread
    "--batch_size=32",
    "--epochs=15",
    "--patience=4",
    "--umap_samples_per_split=300",
    "--transfer_repeats=2",
    "--precision=fp32",
]


SLOW = (
    "slow: starts a subprocess, torchrun or Chromium, reads ../shared, runs the whole pipeline, or a stage at "
    "scale; "
    "`make test-fast` leaves it out (-m 'not slow')"
)


def pytest_configure(config):
    config.addinivalue_line("markers", SLOW)
    # bokeh 3.9's own call (bokeh/models/sources.py) under pandas 3.1; not the lab's code, and users never see it
    config.addinivalue_line("filterwarnings", "ignore:The inplace keyword in DataFrame.reset_index:Warning:bokeh")


@pytest.fixture(autouse=True)
def slow_tests_are_marked(request, monkeypatch):
    """A test that starts a subprocess must carry the slow marker, or it fails here: `make test-fast` stays fast
    and honest. (Worker processes of a DataLoader or a process pool are not subprocesses of this kind.)"""
    if request.node.get_closest_marker("slow") is None:
        import subprocess

        def refuse(*args, **kwargs):
            raise AssertionError(f"{request.node.nodeid} starts a subprocess: mark it @pytest.mark.slow")

        monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    yield


def lock_is_free(folder):
    """Whether no process holds the output folder's lock (another process could take it now), and no record names a
    holder: what a run leaves when it gave the lock back."""
    import filelock

    lock = filelock.FileLock(Path(folder) / output_lock.LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        return False
    lock.release()
    return not (Path(folder) / output_lock.OWNER_NAME).exists()


@pytest.fixture(autouse=True)
def release_output_locks():
    """Scripts run in-process keep their output folder's lock until the process ends; a test ends sooner."""
    yield
    output_lock.release_locks()


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    return demo_data.generate(tmp_path_factory.mktemp("demo") / "demo", counts=TINY_COUNTS)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_demo, tmp_path_factory):
    """The whole pipeline, run once on the tiny demo set: (config, argv, stage timings). Copy its output folder
    before changing anything in it: other tests read it."""
    import run_pipeline

    argv = [f"--data_root={str(tiny_demo)!r}", f"--output_dir={str(tmp_path_factory.mktemp('pipeline'))!r}", *FAST]
    timings = run_pipeline.main(argv)
    return config.load_config(argv), argv, timings


@pytest.fixture(scope="session")
def novelty_ready(tiny_demo, tmp_path_factory):
    """(config, argv) of a model trained on the tiny demo, with its embeddings and novelty thresholds."""
    import embed
    import novelty
    import train

    out = tmp_path_factory.mktemp("novelty-ready")
    argv = [f"--data_root={str(tiny_demo)!r}", f"--output_dir={str(out)!r}", *FAST]
    train.main(argv)
    embed.main(argv)
    novelty.main(argv)
    return config.load_config(argv), argv


@pytest.fixture
def novelty_ready_copy(novelty_ready, tmp_path):
    """(cfg, argv) of a copy of novelty_ready's trained model folder (embeddings, thresholds), free to change."""
    cfg, argv = novelty_ready
    out = tmp_path / "out"
    shutil.copytree(artifacts.resolve(cfg.output_dir), out)
    argv = [a for a in argv if not a.startswith("--output_dir=")] + [f"--output_dir={str(out)!r}"]
    return config.load_config(argv), argv


@pytest.fixture
def make_cfg(tmp_path, tiny_demo):
    """make_cfg(*overrides) -> config on the tiny demo set, artifacts in this test's tmp folder."""

    def make(*overrides, data_root=None, output_dir=None):
        argv = [
            f"--data_root={str(data_root or tiny_demo)!r}",
            f"--output_dir={str(output_dir or tmp_path / 'out')!r}",
            *FAST,
            *overrides,
        ]
        return config.load_config(argv), argv

    return make


@pytest.fixture
def own_defaults(tmp_path, monkeypatch):
    """own_defaults({line: replacement}) -> a copy of the mission's defaults file with those texts replaced, made the
    defaults file (PLANKTON_LAB_CONFIG) of this test: a student's own configfile.py."""

    def make(replacements):
        text = MISSION_CONFIG.read_text()
        for line, replacement in replacements.items():
            assert line in text, line
            text = text.replace(line, replacement)
        path = tmp_path / "own_configfile.py"
        path.write_text(text)
        monkeypatch.setenv("PLANKTON_LAB_CONFIG", str(path))
        return path

    return make


# ----------------------------------------------------- a user's data, new samples, scripts run as a user runs them
BAD_NAME = os.fsdecode(b"bad\xff\xfename.png")  # Latin-1 bytes, as an old zip or a Windows archive leaves them


def run_script(script, *argv, env=None):
    """Run a script (or `-m module`, `-c code`) in a process of its own, from the repository root."""
    import subprocess

    return subprocess.run([sys.executable, script, *argv], cwd=lab.ROOT, capture_output=True, text=True, env=env)


def sample(folder, images, names=None):
    """A folder of new images: copies of `images`, named `names` (img_0000.png ... by default)."""
    folder.mkdir(parents=True)
    for i, source in enumerate(images):
        shutil.copy(source, folder / (names[i] if names else f"img_{i:04d}.png"))
    return folder


def class_images(root, cls, n, skip=0):
    return sorted((root / cls).iterdir())[skip : skip + n]


@pytest.fixture
def own_data(tiny_demo, tmp_path):
    """A user's data folder (a copy of the tiny demo set, without the demo marker)."""
    root = shutil.copytree(tiny_demo, tmp_path / "FlowCamNet" / "imgs")
    (root / demo_data.MARKER).unlink()
    return root


@pytest.fixture
def trained_copy(own_data, tmp_path):
    """(config, argv, data root) of a model trained on a user's copy of the tiny demo set, in this test's folder."""
    import train

    argv = [
        f"--data_root={str(own_data)!r}",
        f"--output_dir={str(tmp_path / 'out')!r}",
        *FAST,
        "--epochs=3",
        "--reduction_method='pca'",
    ]
    train.main(argv)
    return config.load_config(argv), argv, own_data


def analyse_all(argv):
    """The analysis stages after embed.py: distances, the map and transfer learning."""
    import compute_average_distances
    import dimensionality_reduction
    import embed
    import transfer_learning

    embed.main(argv)
    compute_average_distances.main(argv)
    dimensionality_reduction.main(argv)
    transfer_learning.main(argv)


def shared_dataset(name):
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(
            f"{path} is absent: the real-image tests need the shared data folder beside the repository "
            f"(../shared/data/{name}); a user's fresh clone does not have it"
        )
    return path


def wait_for_epoch(cfg, epoch, proc, timeout=600):  # generous: a busy machine is slow, never wrong
    """Wait until the train.py process proc has saved checkpoints/last.pth of this epoch."""
    import time

    from lab import checkpoint

    last = artifacts.out_path(cfg, "checkpoints", "last.pth")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if last.exists():
            try:
                if checkpoint.load(last)["epoch"] >= epoch:
                    return
            except lab.LabError:
                pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    raise AssertionError("training did not reach the epoch in time")


# --------------------------------------------------------------------------- a real browser (the report, the map)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium():
    """The Chromium binary; session-scoped so a machine without one skips before the pipeline fixture runs."""
    candidates = [os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome", "chrome"]
    for name in filter(None, candidates):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "No Chromium on this machine (looked for $CHROMIUM, chromium, chromium-browser, google-chrome, "
        "chrome): the browser tests need one. Install it (Debian: apt-get install chromium; .ci/run "
        "does so when the package manager is reachable) or point $CHROMIUM at a Chrome/Chromium binary."
    )
