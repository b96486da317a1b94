"""The batches component: the order of the rows, the rows each process handles, read-ahead."""

import numpy as np
import pytest
import torch

from xformer.config import TrainConfig
from xformer.distributed import DistInfo
from xformer.errors import XformerError
from xformer.train.batches import Batches, epoch_order, process_rows

CPU = torch.device("cpu")


class Rows:
    """Training data whose row i is the number i; ``seq_len`` makes it readable per process."""

    def __init__(self, n: int, seq_len: bool = False):
        self.n, self.reads = n, []
        if seq_len:
            self.seq_len = lambda indices: len(indices)

    def __len__(self):
        return self.n

    def batch(self, indices, seq_len=None):
        self.reads.append(len(indices))
        return {"x": torch.as_tensor(np.asarray(indices))}


class Task:
    """Draws one random number per row of the whole micro-batch, sliced to ``rows`` when given."""

    def __init__(self, data, local_rows=False):
        self.train_data, self.local_rows = data, local_rows

    def prepare(self, batch, generator, train, rows=None):
        offset, total = rows or (0, len(batch["x"]))
        draws = torch.rand(total, generator=generator)[offset:offset + len(batch["x"])]
        return {"x": batch["x"], "draw": draws}

    def normalizers(self, batch):
        return {"rows": torch.tensor(len(batch["x"]))}


def test_process_rows_split_contiguously_in_near_equal_shares():
    assert [process_rows(8, r, 2) for r in range(2)] == [slice(0, 4), slice(4, 8)]  # batch_size 4 each
    for n, world in [(5, 2), (5, 4), (3, 4), (17, 3)]:
        shares = [process_rows(n, r, world) for r in range(world)]
        assert [i for s in shares for i in range(n)[s]] == list(range(n))
        sizes = [s.stop - s.start for s in shares]
        assert max(sizes) - min(sizes) <= 1


def test_epoch_order_is_a_seeded_permutation():
    a, b = epoch_order(3, 0, 50), epoch_order(3, 1, 50)
    assert sorted(a) == list(range(50)) and (a == epoch_order(3, 0, 50)).all() and not (a == b).all()


def test_micro_batches_walk_each_epochs_order():
    batches = Batches(Task(Rows(10)), TrainConfig(batch_size=4, seed=3, prefetch=False), DistInfo(0, 1, CPU))
    assert batches.epoch_batches == 2  # the last 2 rows of each epoch are left out
    assert list(batches.indices(1)) == list(epoch_order(3, 0, 10)[4:8])
    assert list(batches.indices(2)) == list(epoch_order(3, 1, 10)[:4])
    with pytest.raises(XformerError, match="fewer than one batch"):
        Batches(Task(Rows(7)), TrainConfig(batch_size=4, prefetch=False), DistInfo(0, 2, CPU))


@pytest.mark.parametrize("local_rows", [False, True])
def test_two_processes_hold_the_rows_and_draws_of_one(local_rows):
    cfg = TrainConfig(batch_size=4, seed=1, prefetch=False)
    one = Batches(Task(Rows(40)), cfg.model_copy(update={"batch_size": 8}), DistInfo(0, 1, CPU))
    two = [Batches(Task(Rows(40, seq_len=True), local_rows), cfg, DistInfo(r, 2, CPU)) for r in range(2)]
    for k in range(6):
        whole, _ = one.micro_batch(k)
        parts = [b.micro_batch(k)[0] for b in two]
        for name in ("x", "draw"):
            torch.testing.assert_close(torch.cat([p[name] for p in parts]), whole[name])
    # with local rows each process reads only its 4 rows; otherwise the whole micro-batch of 8
    assert set(two[0].task.train_data.reads) == {4 if local_rows else 8}


def test_reading_ahead_changes_nothing():
    plain = Batches(Task(Rows(30)), TrainConfig(batch_size=4, prefetch=False), DistInfo(0, 1, CPU))
    ahead = Batches(Task(Rows(30)), TrainConfig(batch_size=4, prefetch=True), DistInfo(0, 1, CPU))
    for k in [0, 1, 2, 5, 6, 9]:  # a skip (2 -> 5) reads k now instead of the pending k + 1
        torch.testing.assert_close(ahead.micro_batch(k), plain.micro_batch(k))
    ahead.close()
    # the background thread read 1, 2, 3 (then not used), 6 ...; micro-batches 0, 5 and 9 were read on the spot
    assert len(ahead.task.train_data.reads) >= 7 > len(plain.task.train_data.reads)
