"""Training data in a resumable order: the samples of step s are a pure function of (seed, s).

:class:`StepBatches` cuts per-epoch permutations into the batches of every step and process;
:class:`TrainSamples` turns (epoch, index) into one sample (with Ref_w and LR(Ref_w) for reciprocal
learning), new crops and flips every epoch; :func:`training_set` / :func:`validation_set` build the
datasets a parameter dict names; :func:`worker_errors` passes an input error raised in a loader worker
on with its own message.
"""
from __future__ import annotations

import copy

import numpy as np
from torch.utils.data import Dataset

from .errors import InputError
from .reciprocal import add_warped_reference
from .train_params import resolve_path

__all__ = ["StepBatches", "TrainSamples", "training_set", "validation_set", "worker_errors"]


class StepBatches:
    """Batch sampler: the samples of step s are a pure function of (seed, s), so resuming needs only s.

    The concatenation of per-epoch permutations (permutation e drawn from numpy's generator seeded
    with (seed, e)) is cut into consecutive blocks of batch x world samples; step s takes block s and
    process ``rank`` takes its ``batch`` samples. Yields lists of (epoch, index) pairs.
    """

    def __init__(self, n: int, batch: int, seed: int, start_step: int, total_steps: int, rank: int = 0,
                 world: int = 1):
        self.n, self.batch, self.seed, self.rank, self.world = n, batch, seed, rank, world
        self.start, self.total = start_step, total_steps
        self._perm: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perm[epoch]

    def samples(self, step: int) -> list[tuple[int, int]]:
        """(epoch, index) of this process's samples at step ``step`` (0-based)."""
        first = step * self.batch * self.world + self.rank * self.batch
        out = []
        for p in range(first, first + self.batch):
            epoch = p // self.n
            out.append((epoch, int(self._permutation(epoch)[p % self.n])))
        return out

    def __iter__(self):
        for step in range(self.start, self.total):
            yield self.samples(step)

    def __len__(self) -> int:
        return self.total - self.start


class TrainSamples(Dataset):
    """Wrap a training dataset: item (epoch, index) -> dict of tensors "lr", "hr", "ref" (+ "ref_w", "lr_ref_w").

    Datasets whose random choices are seeded by their ``seed`` attribute and the index (the embedded
    pairs, CUFED's augmentation) get a different seed in every epoch, so that every epoch brings
    new crops and flips while each item stays a pure function of (seed, epoch, index). Ref_w is drawn
    from a numpy generator seeded the same way.
    """

    def __init__(self, base: Dataset, seed: int, reciprocal: bool, warp_px: tuple[float, float]):
        self.base, self.seed, self.reciprocal, self.warp_px = base, seed, reciprocal, warp_px
        self._epoch_copy: tuple[int, Dataset] | None = None

    def __len__(self) -> int:
        return len(self.base)

    def _dataset(self, epoch: int) -> Dataset:
        if not hasattr(self.base, "seed"):
            return self.base
        if self._epoch_copy is None or self._epoch_copy[0] != epoch:
            ds = copy.copy(self.base)  # shallow: the loaded photos are shared
            ds.seed = int(np.random.default_rng([self.seed, epoch, 7]).integers(2 ** 31))
            self._epoch_copy = (epoch, ds)
        return self._epoch_copy[1]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        item = self._dataset(epoch)[index]
        sample = {k: item[k] for k in ("lr", "hr", "ref")}
        if self.reciprocal:
            rng = np.random.default_rng([self.seed, epoch, index, 1])
            sample = add_warped_reference(sample, rng, self.warp_px)
        return sample



def training_set(p: dict) -> Dataset:
    """The training dataset that checked parameters ``p`` name (embedded pairs or a CUFED folder)."""
    from . import data

    if p["dataset"] == "embedded":
        return data.EmbeddedTrainPairs(patch_size=p["hr_patch"], levels=tuple(p["embedded_levels"]),
                                       length=p["embedded_length"], seed=p["seed"], augment=p["augment"])
    return data.CUFEDTrain(resolve_path(p["data_root"]), ref_size=p["ref_size"], augment=p["augment"], seed=p["seed"])


def validation_set(p: dict) -> Dataset | None:
    """The validation pairs that ``p`` name (None for val_dataset 'none')."""
    from . import data

    if p["val_dataset"] == "none":
        return None
    if p["val_dataset"] == "embedded":
        return data.EmbeddedTestPairs()
    return data.CUFED5(resolve_path(p["val_root"]), mode="level", level=1)



def worker_errors(loader):
    """The loader's batches; an InputError raised in a worker process comes out with its own message (torch
    wraps it in "Caught InputError in DataLoader worker process 0. Original Traceback ...")."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except InputError as exc:
            text = str(exc)
            if "Original Traceback" in text:
                last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
                text = last.split("InputError: ", 1)[-1]
            raise InputError(text) from None
        yield batch
