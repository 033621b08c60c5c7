"""cpu_threads="auto" (lab/thread_choice.py): the faster of one thread and torch's count, timed on the head's own
batches, kept for KEEP_SECONDS and timed again, so that a load that comes or goes while a run trains moves the
choice. The batches' cost is simulated on a fake clock: seconds per image by thread count, as a machine would show
them idle (two threads faster) or beside a busy process (one thread faster)."""

import contextlib

import pytest
import torch

from lab import thread_choice


class FakeMachine:
    """A clock, and the cost of a batch on the thread count torch is set to (read inside the batch block, so the
    test also checks that the block set it)."""

    def __init__(self, cost):
        self.now, self.cost = 0.0, dict(cost)

    def clock(self):
        return self.now

    def run(self, choice, kind="train", images=64, batches=1):
        counts = []
        for _ in range(batches):
            with choice.batch(kind, images):
                count = torch.get_num_threads()
                self.now += self.cost[count] * images
            counts.append(count)
        return counts


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("setting", "available", "counts"), [("auto", 2, [2, 1]), ("auto", 1, [1]), (4, 2, [2]), (1, 2, [1]), (2, 4, [2])]
)
def test_thread_counts(setting, available, counts):
    assert thread_choice.thread_counts(setting, available) == counts


@pytest.mark.parametrize(("cost", "faster"), [({1: 3e-4, 2: 2e-4}, 2), ({1: 3e-4, 2: 9e-4}, 1)])
def test_auto_times_each_count_then_keeps_the_faster(two_threads, cost, faster):
    machine = FakeMachine(cost)
    choice = thread_choice.ThreadChoice([2, 1], probe_batches=5, keep_seconds=30, clock=machine.clock)
    probe = machine.run(choice, batches=12)
    assert probe == [2] * 6 + [1] * 6  # a warm-up batch and 5 timed ones on each count, most threads first
    assert set(machine.run(choice, batches=50)) == {faster}
    assert choice.describe().startswith(f"auto: {thread_choice.threads_text(faster)} for ")


def test_auto_compares_throughput_so_a_heavy_tail_under_load_decides(two_threads):
    """Beside busy processes most two-thread batches are fast and a few stall (one thread descheduled, its partner
    spinning): the median batch would pick two threads, the images per second of the whole probe picks one."""
    machine = FakeMachine({1: 3e-4, 2: 1e-4})
    choice = thread_choice.ThreadChoice([2, 1], probe_batches=5, keep_seconds=30, clock=machine.clock)
    two_thread_costs = [1e-4, 1e-4, 1e-4, 2e-3, 1e-4, 1e-4]  # warm-up, then 5 timed: median 1e-4, mean 4.8e-4
    for cost in two_thread_costs:
        machine.cost[2] = cost
        assert machine.run(choice) == [2]
    assert machine.run(choice, batches=6) == [1] * 6  # one thread: 3e-4 s per image, every batch
    assert set(machine.run(choice, batches=20)) == {1}


def test_the_warm_up_batch_of_each_count_is_not_timed(two_threads):
    """The first batch after a change of count pays for waking threads: a slow one must not decide."""
    machine = FakeMachine({1: 3e-4, 2: 2e-4})
    choice = thread_choice.ThreadChoice([2, 1], probe_batches=1, keep_seconds=30, clock=machine.clock)
    machine.cost[2] = 1.0  # the warm-up batch on 2 threads is very slow
    machine.run(choice)
    machine.cost[2] = 2e-4
    machine.run(choice, batches=3)  # the timed batch on 2, then the warm-up and the timed batch on 1
    assert machine.run(choice, batches=5) == [2] * 5


def test_a_load_that_arrives_moves_the_choice_after_keep_seconds(two_threads):
    machine = FakeMachine({1: 3e-4, 2: 2e-4})  # idle: two threads faster
    choice = thread_choice.ThreadChoice([2, 1], probe_batches=5, keep_seconds=30, clock=machine.clock)
    machine.run(choice, batches=12)
    machine.cost[2] = 9e-4  # another process starts: two threads now 3x slower than one
    before_expiry = machine.run(choice, batches=int(25 / (9e-4 * 64)))  # ~25 s: the choice still holds
    assert set(before_expiry) == {2}
    machine.now = 31.0  # past the choice's 30 s: a new probe times both counts again
    assert machine.run(choice, batches=12) == [2] * 6 + [1] * 6
    assert set(machine.run(choice, batches=20)) == {1}
    shares = choice.shares()
    assert set(shares) == {1, 2} and sum(shares.values()) == pytest.approx(1)


def test_training_and_evaluation_batches_are_timed_apart(two_threads):
    """An evaluation batch costs less per image than a training batch: a probe that mixed them could pick the
    count that happened to run the evaluation. Each kind keeps its own probe and choice."""
    machine = FakeMachine({1: 3e-4, 2: 2e-4})
    choice = thread_choice.ThreadChoice([2, 1], probe_batches=2, keep_seconds=30, clock=machine.clock)
    machine.run(choice, "train", batches=3)  # the probe of 2 threads for training batches
    assert machine.run(choice, "eval") == [2]  # evaluation starts its own probe, on 2 threads first
    assert machine.run(choice, "train", batches=3) == [1, 1, 1]  # training's probe goes on where it was


def test_one_count_is_never_timed(two_threads):
    choice = thread_choice.ThreadChoice([1])
    machine = FakeMachine({1: 3e-4, 2: 2e-4})
    assert machine.run(choice, batches=20) == [1] * 20
    assert choice.passes == {} and choice.describe() == "1 thread"


@pytest.mark.parametrize("setting", ["auto", 1])
def test_chosen_gives_torch_its_count_back_and_ends_the_choice(two_threads, setting, monkeypatch):
    monkeypatch.setattr(thread_choice, "_made", {})
    cpu = torch.device("cpu")
    with thread_choice.chosen(setting) as choice:
        with thread_choice.chosen(setting) as inner:  # a block inside another goes on with the outer choice
            assert inner is choice
        with thread_choice.batch_threads(cpu, "train", 64):
            assert torch.get_num_threads() == thread_choice.thread_counts(setting, 2)[0]
        torch.set_num_threads(1)  # as a batch on one thread leaves it
    assert torch.get_num_threads() == 2 and thread_choice._active is None
    assert isinstance(thread_choice.batch_threads(cpu, "train", 64), contextlib.nullcontext)  # outside: as it is


def test_a_costly_probe_holds_the_choice_longer(two_threads):
    """Where the slower count is far slower (two threads beside a busy process), timing it every 30 s would cost
    several percent: the choice then holds until the probe's loss is MAX_PROBE_SHARE of the time between probes."""
    machine = FakeMachine({1: 3e-4, 2: 3e-3})
    choice = thread_choice.ThreadChoice([2, 1], probe_batches=5, keep_seconds=30, clock=machine.clock)
    machine.run(choice, batches=12)
    lost = 6 * 64 * (3e-3 - 3e-4)  # the 6 batches on 2 threads, against the same images on 1
    keep = lost / thread_choice.MAX_PROBE_SHARE
    assert keep > 60
    end_of_probe = machine.now
    machine.now = end_of_probe + keep - 1
    assert machine.run(choice, batches=3) == [1, 1, 1]
    machine.now = end_of_probe + keep + 1
    assert machine.run(choice, batches=2) == [2, 2]  # a new probe, most threads first


def test_a_block_opened_again_goes_on_with_its_timings(two_threads, monkeypatch):
    """predict.py opens a block per chunk of 1,000 images, the trunk pass one per split: each must not probe anew
    (a small split would spend most of its batches probing)."""
    monkeypatch.setattr(thread_choice, "_made", {})
    with thread_choice.chosen("auto") as first:
        pass
    with thread_choice.chosen("auto") as again:
        assert again is first
    with thread_choice.chosen(1) as other:
        assert other is not first


def test_the_hold_is_capped_and_counts_only_the_slower_counts_loss(two_threads):
    machine = FakeMachine({1: 3e-4, 2: 0.5})  # two threads absurdly slow: the loss alone would hold for hours
    choice = thread_choice.ThreadChoice([2, 1], probe_batches=5, keep_seconds=30, clock=machine.clock)
    machine.run(choice, batches=12)
    end_of_probe = machine.now
    machine.now = end_of_probe + thread_choice.MAX_KEEP_SECONDS + 1
    assert machine.run(choice, batches=2) == [2, 2]  # probed again after at most MAX_KEEP_SECONDS
    assert choice.describe(("train",)) == "auto: 2 threads for 57 % of batches, 1 thread for 43 % of batches"
    assert choice.describe(("eval",)) == "auto: no batch yet"  # the shares count the kinds asked for
