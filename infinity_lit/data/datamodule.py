"""Streaming the shards into training: ``ShardDataset`` (batches, split over ranks and workers) and the
``ShardDataModule`` LightningDataModule around it.

Splitting. A rank of a DDP job runs ``num_workers`` DataLoader workers; the job has
N = world_size × max(1, num_workers) *global workers*, global worker g = worker id × world_size + rank
(ranks interleaved, so that every rank gets data as soon as there are world_size samples). When a split
has at least ``shard_split_min`` × N shards, global worker g reads shards g, g+N, g+2N, ... of the (for
training, per-epoch permuted) shard list. Otherwise every global worker reads all shards and keeps the samples whose running index i satisfies i mod N = g: it reads N times the data but
decodes only its share, and the workers' shares differ by at most one sample, where whole shards
(256 samples each by default) would leave some workers with far more than others on a small data set.
Either way each sample goes to exactly one global worker.

Validation/test: shards in manifest order, no shuffling, partial last batches kept, so each sample is
seen exactly once per epoch across all ranks × workers (ranks may differ by a batch; Lightning's
epoch-end metric reduction does not need equal counts).

Training: every global worker yields exactly ⌊n_train / N⌋ samples per epoch in full batches (a worker
whose shards hold fewer samples continues into its shards of the next permutation), so every rank has the
same number of steps, ``len(train_dataloader())``, and DDP never waits on a rank that ran out. Samples are
shuffled by the shard permutation and a buffer of ``shuffle_buffer`` undecoded samples per worker, all
seeded from ``seed`` and the epoch.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from infinity_lit.data.shards import (
    DamagedShardError,
    check_resolution,
    decode_sample,
    image_to_uint8,
    raw_samples,
    read_manifest,
    rebuild_hint,
    resize_cover_crop,
    skipped_name,
    split_shards,
    strict_hint,
)
from infinity_lit.training.seeding import run_seed

__all__ = ["BucketedShardDataset", "ShardDataModule", "ShardDataset"]

Batch = dict[str, Any]


class ShardDataset(IterableDataset):
    """Batches of one split of a shard directory, for one rank of a (possibly) distributed job.

    Yields dicts ``{"image": float32 (B, 3, resolution, resolution) in [-1, 1], "caption": list[str],
    "key": list[str], "position": (global worker, raw samples passed, samples yielded) after the batch}``
    (the position is what resuming mid-epoch needs). Use with ``DataLoader(dataset, batch_size=None,
    num_workers=num_workers)``, the
    same ``num_workers`` as given here (``ShardDataModule`` does this).

    Args:
        data_dir: directory built by ``infinity-lit data openmoji|folder``.
        split: "train" or "val".
        resolution: output side in pixels; images are resized (shorter side) and centre-cropped.
        batch_size: samples per batch.
        train: shuffle and yield a fixed number of full batches per worker (see the module docstring);
            otherwise read in order, each sample once, keeping partial batches.
        rank: this process's global rank.
        world_size: number of ranks.
        num_workers: DataLoader workers per rank (0 = load in the main process).
        shuffle_buffer: samples held per worker for shuffling (training only).
        seed: seed of the shard permutation and buffer shuffling (with the epoch).
        strict: raise at the first undecodable image or damaged shard instead of skipping.
        shard_split_min: split by whole shards only when every global worker gets at least this many.
        bucket: read only the shards of this aspect-ratio bucket of the data set (``data folder
            --aspect_ratios``), yielding images of its size instead of ``resolution``².

    Skipped samples. A sample whose image fails to decode, and each sample lost in a damaged shard (a
    truncated file, a corrupt tar header, a file that cannot be opened: ``shards.raw_samples``), is skipped
    with a warning naming shard and key (one warning per damaged shard, giving where reading failed and
    how many samples were lost) and counted in ``skipped``; the batch is filled from the next samples, and
    the samples of a damaged shard that can be read, before and after the damaged place, are still used.
    With ``strict`` the first one raises ``ValueError`` (``shards.DamagedShardError`` for a damaged shard)
    naming shard and key and what to do.

    Attributes:
        epoch: the epoch whose order is produced; set before iterating (``ShardDataModule`` does).
        skipped: int64 (max(1, num_workers),) in shared memory: samples skipped per worker (undecodable
            images and samples lost in damaged shards), all epochs.

    Raises:
        ValueError: bad resolution, batch size, rank or split; the split has no sample. FileNotFoundError: no
            data. While iterating, ValueError: with ``strict``, a skipped sample; a training worker finds no
            readable sample in more than the whole split.
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        resolution: int,
        batch_size: int,
        *,
        train: bool,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        strict: bool = False,
        shard_split_min: int = 16,
        bucket: str | None = None,
    ) -> None:
        super().__init__()
        self.resolution = check_resolution(resolution)
        self.bucket = bucket
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 ≤ rank < world_size, got rank={rank}, world_size={world_size}")
        if num_workers < 0 or shuffle_buffer < 1:
            raise ValueError(
                f"need num_workers ≥ 0 and shuffle_buffer ≥ 1, got {num_workers}, {shuffle_buffer}"
            )
        self.data_dir = Path(data_dir)
        self.split = split
        manifest = read_manifest(self.data_dir) if bucket is not None else None
        self.shards = split_shards(self.data_dir, split, manifest, bucket=bucket)
        #: (height, width) of the images yielded: the bucket's size, else resolution².
        self.size: tuple[int, int] = (
            tuple(manifest["buckets"][bucket]["size"]) if manifest is not None else (resolution, resolution)
        )
        self.num_samples = sum(count for _, count in self.shards)
        if self.num_samples == 0:
            raise ValueError(
                f"the {split!r} split of {str(self.data_dir)!r} has no samples; {rebuild_hint(self.data_dir)}"
            )
        self.batch_size = batch_size
        self.train = train
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.shuffle_buffer, self.seed, self.strict = shuffle_buffer, seed, strict
        self.shard_split_min = shard_split_min
        self.epoch = 0
        #: Where the next training pass starts (``_EpochDataLoader.load_state_dict`` sets it for one pass):
        #: "positions", global worker → (raw samples passed, samples yielded), passed over without
        #: decoding; else "batches", batches of this rank already yielded, decoded again and dropped.
        self.resume: dict[str, Any] | None = None
        self.skipped = torch.zeros(max(1, num_workers), dtype=torch.int64).share_memory_()
        #: ``SHARD/KEY`` of the samples skipped since the last batch was made (this process).
        self.skipped_names: list[str] = []
        if not train and self.num_samples < world_size:
            raise ValueError(
                f"the {split!r} split has {self.num_samples} samples, fewer than the {world_size} ranks; "
                "every rank needs at least one"
            )
        if train and self.batches_per_worker() == 0:
            raise ValueError(
                f"the {split!r} split has {self.num_samples} samples, fewer than one batch of {batch_size} per "
                f"worker across {self.num_global_workers} workers ({world_size} ranks × {max(1, num_workers)}); "
                "lower batch_size or num_workers"
            )

    # ------------------------------------------------------------ sizes

    @property
    def num_global_workers(self) -> int:
        return self.world_size * max(1, self.num_workers)

    def _by_shard(self) -> bool:
        return len(self.shards) >= self.shard_split_min * self.num_global_workers

    def samples_per_worker(self, global_worker: int) -> int:
        """Samples global worker ``global_worker`` yields per epoch (before any samples are skipped)."""
        n = self.num_global_workers
        if self.train:
            return self.num_samples // n
        if self._by_shard():
            return sum(count for _, count in self.shards[global_worker::n])
        return len(range(global_worker, self.num_samples, n))

    def batches_per_worker(self, global_worker: int = 0) -> int:
        per_worker = self.samples_per_worker(global_worker)
        if self.train:
            return per_worker // self.batch_size
        return -(-per_worker // self.batch_size)

    def __len__(self) -> int:
        """Batches this rank yields per epoch (all its workers together)."""
        workers = max(1, self.num_workers)
        return sum(self.batches_per_worker(w * self.world_size + self.rank) for w in range(workers))

    @property
    def skipped_samples(self) -> int:
        """Samples skipped (undecodable images, samples lost in damaged shards), over all workers and epochs
        so far."""
        return int(self.skipped.sum())

    # ------------------------------------------------------------ iteration

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        worker_id, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers != max(1, self.num_workers):
            raise RuntimeError(
                f"ShardDataset was built for num_workers={self.num_workers} but runs in a DataLoader with "
                f"{workers if info else 0}; pass the same number to both"
            )
        return worker_id, worker_id * self.world_size + self.rank

    def _assigned(self, shards: list[tuple[Path, int]], global_worker: int) -> Iterator[dict[str, Any]]:
        """This worker's raw samples of ``shards`` ((path, count) pairs), placeholders of lost samples
        included (``raw_samples``: the stream is the same at every reading, so positions stay valid)."""
        n = self.num_global_workers
        if self._by_shard():
            yield from raw_samples(shards[global_worker::n], strict=self.strict)
        else:
            yield from islice(raw_samples(shards, strict=self.strict), global_worker, None, n)

    def _train_raw(self, global_worker: int) -> Iterator[dict[str, Any]]:
        """This worker's samples for the epoch, shuffled, then (only if a short share needs padding) those
        of further shard permutations. Each pass is shuffled on its own so that the first pass is used up
        before the next begins."""
        repeat = 0
        while True:
            order = list(self.shards)
            # A string seed is hashed with SHA-512 by `random`: identical in every process and rank.
            random.Random(f"shards:{self.seed}:{self.epoch}:{repeat}").shuffle(order)
            rng = random.Random(f"buffer:{self.seed}:{self.epoch}:{repeat}:{global_worker}")
            produced = 0
            for sample in self._shuffled(self._assigned(order, global_worker), rng):
                produced += 1
                yield sample
            if produced == 0:
                return
            repeat += 1

    def _shuffled(self, samples: Iterator[dict[str, Any]], rng: random.Random) -> Iterator[dict[str, Any]]:
        buffer: list[dict[str, Any]] = []
        for sample in samples:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], sample = sample, buffer[i]
            yield sample
        rng.shuffle(buffer)
        yield from buffer

    def _decoded(
        self, samples: Iterator[dict[str, Any]], worker_id: int, raw_offset: int = 0
    ) -> Iterator[tuple[str, torch.Tensor, str, int]]:
        """(key, uint8 image, caption, raw samples consumed so far including this one) per decodable
        sample; ``raw_offset`` raw samples were passed over before. Undecodable samples and placeholders of
        samples lost in damaged shards are counted in ``skipped``, warned about (see the class) and named
        (``SHARD/KEY``) in ``skipped_names``, which ``_batches`` empties into each batch."""
        failures_in_a_row = 0
        skipped = self.skipped_names
        for raw_count, sample in enumerate(samples, start=raw_offset + 1):
            try:
                key, image, caption = decode_sample(sample)
            except ValueError as exc:
                if self.strict:
                    if isinstance(exc, DamagedShardError):
                        raise
                    raise ValueError(f"{exc}; {strict_hint(self.data_dir)}") from exc
                self.skipped[worker_id] += 1
                skipped.append(skipped_name(sample, exc))
                if not isinstance(exc, DamagedShardError):
                    warnings.warn(f"skipping {exc}", stacklevel=2)
                elif exc.first:  # one warning for all the samples lost at that damaged place
                    warnings.warn(str(exc), stacklevel=2)
                failures_in_a_row += 1
                if failures_in_a_row > self.num_samples:
                    raise ValueError(
                        f"no sample of the {self.split!r} split in {str(self.data_dir)!r} can be read: more "
                        f"than its {self.num_samples} samples in a row were skipped (see the warnings); "
                        f"{rebuild_hint(self.data_dir)}"
                    ) from exc
                continue
            failures_in_a_row = 0
            yield key, image_to_uint8(resize_cover_crop(image, self.size)), caption, raw_count

    def _batches(
        self,
        items: Iterator[tuple[str, torch.Tensor, str, int]],
        *,
        partial: bool,
        global_worker: int = 0,
        yielded: int = 0,
    ) -> Iterator[Batch]:
        while True:
            chunk = list(islice(items, self.batch_size))
            if not chunk or (len(chunk) < self.batch_size and not partial):
                return
            keys, images, captions, raw_counts = zip(*chunk)
            # skipped before or among this batch's samples (or after them, at the end of the pass)
            skipped, self.skipped_names[:] = list(self.skipped_names), []
            yielded += len(chunk)
            yield {
                "image": torch.stack(images).float().div_(127.5).sub_(1.0),  # uint8 [0,255] → [-1,1]
                "caption": list(captions),
                "key": list(keys),
                # ``SHARD/KEY`` of the samples skipped while this batch was filled (``log_skipped_samples``).
                SKIPPED: skipped,
                # (global worker, raw samples passed, samples yielded[, bucket]) after this batch, for resuming.
                POSITION: (global_worker, raw_counts[-1], yielded)
                + ((self.bucket,) if self.bucket is not None else ()),
            }

    def __iter__(self) -> Iterator[Batch]:
        worker_id, global_worker = self._worker()
        if self.train:
            return self._train_batches(worker_id, global_worker)
        raw = self._assigned(self.shards, global_worker)
        return self._batches(self._decoded(raw, worker_id), partial=True, global_worker=global_worker)

    def _train_batches(self, worker_id: int, global_worker: int) -> Iterator[Batch]:
        raw = self._train_raw(global_worker)
        total = self.samples_per_worker(global_worker)
        resume = self.resume or {}
        position = (resume.get("positions") or {}).get(global_worker)
        passed, yielded = (int(position[0]), int(position[1])) if position is not None else (0, 0)
        if passed:
            raw = islice(raw, passed, None)  # read, not decoded
        items = islice(self._decoded(raw, worker_id, raw_offset=passed), total - yielded)
        batches = self._batches(items, partial=False, global_worker=global_worker, yielded=yielded)
        done = int(resume.get("batches") or 0) if position is None else 0
        return _drop_dealt(batches, done, worker_id, max(1, self.num_workers))


def _round_robin(streams: list[Iterator[Batch]]) -> Iterator[Batch]:
    """One item of each stream in turn, leaving out streams that have ended."""
    while streams:
        left = []
        for stream in streams:
            item = next(stream, None)
            if item is not None:
                yield item
                left.append(stream)
        streams = left


def _drop_dealt(batches: Iterator[Batch], done: int, worker_id: int, workers: int) -> Iterator[Batch]:
    """``batches`` of local worker ``worker_id`` without those among the first ``done`` of its rank:
    batches are dealt to the local workers in turn, worker w made the (i·W + w)-th ones."""
    if done <= worker_id:
        return batches
    return islice(batches, -(-(done - worker_id) // workers), None)


class BucketedShardDataset(IterableDataset):
    """Batches of one split of an aspect-ratio-bucketed shard directory (``data folder --aspect_ratios``):
    every batch holds images of one bucket, (B, 3, h, w) at the bucket's size.

    One ``ShardDataset`` per bucket does the reading, splitting and resuming (see the module docstring):
    each bucket yields per epoch what a data set of its samples alone would (training: ⌊n_bucket / N⌋
    samples per global worker in full batches, so a bucket with fewer than N × batch_size training samples
    gives none and is warned about; validation: each sample once, partial batches kept). Training
    interleaves the buckets' batches in an order drawn per epoch and local worker from ``seed``, the same
    on every rank, so all ranks run one bucket at a step and equally many steps. Validation takes a batch
    of each bucket in turn (ascending aspect ratio), so that a validation limited to a few batches
    (``trainer.limit_val_batches``) still sees every bucket.

    Arguments as ``ShardDataset`` (without ``bucket``); ``resolution`` is only checked, the sizes come from
    the manifest. Attributes: ``buckets`` (name → its ``ShardDataset``, ascending h/w, only buckets with data
    for this split), ``epoch``, ``resume``, ``skipped_samples`` as ``ShardDataset``.

    Raises:
        ValueError: as ``ShardDataset``; no bucket has enough samples for one training batch per worker.
    """

    def __init__(
        self, data_dir: str | Path, split: str, resolution: int, batch_size: int, **kwargs: Any
    ) -> None:
        super().__init__()
        self.data_dir, self.split, self.train = Path(data_dir), split, bool(kwargs["train"])
        manifest = read_manifest(self.data_dir)
        self.buckets: dict[str, ShardDataset] = {}
        too_small: list[str] = []
        for name, info in sorted(manifest["buckets"].items(), key=lambda kv: kv[1]["aspect_ratio"]):
            if not info["counts"].get(split):
                continue
            try:
                self.buckets[name] = ShardDataset(
                    data_dir, split, resolution, batch_size, bucket=name, **kwargs
                )
            except ValueError as exc:
                if not self.train or "fewer than one batch" not in str(exc):
                    raise
                too_small.append(f"{name} ({info['counts'][split]} samples)")
        if not self.buckets:
            raise ValueError(
                f"no aspect-ratio bucket of the {split!r} split of {str(data_dir)!r} has enough samples for one "
                f"batch of {batch_size} per worker: {', '.join(too_small) or 'none has samples'}; lower "
                "batch_size or num_workers, or build the data set with fewer --aspect_ratios"
            )
        if too_small:
            warnings.warn(
                f"aspect-ratio buckets {', '.join(too_small)} of the {split!r} split hold fewer samples than one "
                f"batch of {batch_size} per worker and are not trained on",
                stacklevel=2,
            )
        first = next(iter(self.buckets.values()))
        self.batch_size, self.num_workers, self.world_size = batch_size, first.num_workers, first.world_size
        self.rank, self.seed = first.rank, first.seed
        self.epoch = 0
        #: Where the next training pass starts (as ``ShardDataset.resume``; positions keyed by
        #: (global worker, bucket)).
        self.resume: dict[str, Any] | None = None

    @property
    def skipped_samples(self) -> int:
        return sum(d.skipped_samples for d in self.buckets.values())

    def __len__(self) -> int:
        return sum(len(d) for d in self.buckets.values())

    def _order(self, worker_id: int, global_worker: int) -> list[str]:
        order = [name for name, d in self.buckets.items() for _ in range(d.batches_per_worker(global_worker))]
        random.Random(f"buckets:{self.seed}:{self.epoch}:{worker_id}").shuffle(order)
        return order

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker_id = 0 if info is None else info.id
        global_worker = worker_id * self.world_size + self.rank
        for d in self.buckets.values():
            d.epoch = self.epoch
        if not self.train:
            return _round_robin([iter(d) for d in self.buckets.values()])
        return self._train_batches(worker_id, global_worker)

    def _train_batches(self, worker_id: int, global_worker: int) -> Iterator[Batch]:
        resume = self.resume or {}
        positions = resume.get("positions") or {}
        streams: dict[str, Iterator[Batch]] = {}
        consumed: dict[str, int] = {}
        for name, d in self.buckets.items():
            position = positions.get((global_worker, name))
            d.resume = {"positions": {global_worker: position}} if position is not None else None
            consumed[name] = int(position[1]) // self.batch_size if position is not None else 0
            streams[name] = d._train_batches(worker_id, global_worker)
            d.resume = None
        order = self._order(worker_id, global_worker)
        if any(consumed.values()):  # resume from positions: pass over the batches already yielded
            left = []
            for name in order:
                if consumed[name]:
                    consumed[name] -= 1
                else:
                    left.append(name)
            order = left
        batches = (next(streams[name]) for name in order)
        own = any(key[0] == global_worker for key in positions)
        done = int(resume.get("batches") or 0) if not own else 0
        return _drop_dealt(batches, done, worker_id, max(1, self.num_workers))


#: Batch key holding (global worker, raw samples passed, samples yielded) after the batch (training data).
POSITION = "position"
#: Batch key holding the ``SHARD/KEY`` names of the samples skipped while the batch was filled.
SKIPPED = "skipped"


def _format_key(key: int | tuple[int, str]) -> str:
    # A state's position key: "GLOBAL_WORKER", or "GLOBAL_WORKER@BUCKET" for a bucketed data set.
    return f"{key[0]}@{key[1]}" if isinstance(key, tuple) else str(key)


def _parse_key(text: str) -> int | tuple[int, str]:
    worker, sep, bucket = str(text).partition("@")
    return (int(worker), bucket) if sep else int(worker)


class _EpochDataLoader(DataLoader):
    """A DataLoader that tells its ``ShardDataset`` the epoch before each pass, and a stateful one: Lightning
    saves ``state_dict()`` in every checkpoint and gives it back to ``load_state_dict`` on resume.

    Lightning calls ``set_epoch`` only on samplers, which an IterableDataset does not have; workers are
    re-created each pass (not persistent), so they receive the updated epoch (and where to start).

    The state of a training pass is its epoch, the batches this rank has yielded and, per global worker,
    where its last yielded batch ended (raw samples passed, samples yielded). A pass resumed in the same
    epoch starts there: the workers pass over the raw samples already used without decoding them, so no
    sample of the epoch is seen twice or skipped, undecodable ones included (and the placeholders of samples
    lost in damaged shards, which are raw samples too: ``shards.raw_samples``). A worker of another rank (a
    checkpoint holds rank 0's state) decodes and drops the batches already yielded instead. A state of
    another epoch (a checkpoint written at an epoch's end) is not used: the next epoch starts afresh.
    """

    def __init__(self, dataset: ShardDataset, epoch_fn: Callable[[int], int], **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, persistent_workers=False, **kwargs)
        self._epoch_fn = epoch_fn
        self._passes = 0
        self._state: dict[str, Any] = {}
        self._pending: dict[str, Any] | None = None
        self._workers: Any = None

    def __iter__(self):  # type: ignore[override]
        dataset: ShardDataset = self.dataset  # type: ignore[assignment]
        epoch = self._epoch_fn(self._passes)
        dataset.epoch = epoch
        self._passes += 1
        pending, self._pending = self._pending, None
        resume = pending if pending is not None and pending.get("epoch") == epoch and dataset.train else None
        positions = {_parse_key(k): tuple(v) for k, v in ((resume or {}).get("positions") or {}).items()}
        self._state = {
            "epoch": epoch,
            "batches": int((resume or {}).get("batches") or 0),
            "positions": positions,
        }
        dataset.resume = {"batches": self._state["batches"], "positions": positions} if resume else None
        self.close()
        try:
            iterator = super().__iter__()  # the workers take their copy of the dataset here
        finally:
            dataset.resume = None
        self._workers = iterator
        workers = max(1, dataset.num_workers)
        if resume and self._state["batches"] % workers:
            # The DataLoader asks its workers in turn from worker 0; an uninterrupted pass would ask the
            # worker after the one that made the last batch.
            iterator = self._in_turn(iterator, workers, self._state["batches"] % workers, dataset.world_size)
        return self._tracked(iterator, dataset.skipped_samples)

    @staticmethod
    def _in_turn(iterator: Iterator[Batch], workers: int, first: int, world_size: int) -> Iterator[Batch]:
        """Reorder batches that come from local workers 0, 1, …, W−1 in turn into the turn that starts at
        worker ``first`` (holding back at most one batch per worker)."""
        held: dict[int, list[Batch]] = {w: [] for w in range(workers)}
        turn = first
        exhausted = False
        while True:
            while not held[turn] and not exhausted:
                batch = next(iterator, None)
                if batch is None:
                    exhausted = True
                    break
                held[int(batch[POSITION][0]) // world_size].append(batch)
            if held[turn]:
                yield held[turn].pop(0)
            elif exhausted and not any(held.values()):
                return
            turn = (turn + 1) % workers

    def close(self) -> None:
        """End the worker processes of the current pass, if any (a pass that ran to its end has none left;
        one abandoned, e.g. by an exception in the training step, may keep them until garbage collection)."""
        workers, self._workers = getattr(self, "_workers", None), None
        shutdown = getattr(workers, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def _tracked(self, iterator: Iterator[Batch], skipped_before: int) -> Iterator[Batch]:
        """The batches, noting positions; raises ``ValueError`` if a pass skipped samples and yielded none."""
        dataset: ShardDataset = self.dataset  # type: ignore[assignment]
        batches = 0
        try:
            for batch in iterator:
                position = batch.get(POSITION) if isinstance(batch, dict) else None
                if position is not None:
                    key = int(position[0]) if len(position) == 3 else (int(position[0]), str(position[3]))
                    self._state["positions"][key] = (int(position[1]), int(position[2]))
                self._state["batches"] += 1
                batches += 1
                yield batch
        finally:
            self.close()
        skipped = dataset.skipped_samples - skipped_before
        if batches == 0 and skipped:
            raise ValueError(
                f"no sample of the {dataset.split!r} split in {str(dataset.data_dir)!r} could be read on "
                f"this rank: {skipped} skipped (see the warnings); {rebuild_hint(dataset.data_dir)}"
            )

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "batches", "positions"}`` of the current pass (empty before the first)."""
        if not self._state:
            return {}
        positions = {_format_key(k): list(v) for k, v in self._state["positions"].items()}
        return {"epoch": self._state["epoch"], "batches": self._state["batches"], "positions": positions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Start the next pass where ``state`` (a ``state_dict()``) ended, if it is of that pass's epoch."""
        self._pending = dict(state) if state else None


class ShardDataModule(L.LightningDataModule):
    """Image–caption batches from webdataset shards, for the tokenizer and the generator.

    Batches are ``{"image": float32 (B, 3, resolution, resolution) in [-1, 1], "caption": list[str],
    "key": list[str], "position": …}`` (``ShardDataset``); images are resized (shorter side, antialiased
    bicubic) and centre-cropped to ``resolution``, or, on a data set of aspect-ratio buckets, batched by
    bucket at the bucket's size (``BucketedShardDataset``). Train batches are shuffled and equal in number on every rank; validation and test
    (both the "val" split) visit each sample exactly once per epoch across ranks and workers. Splitting
    across DDP ranks and DataLoader workers is done here (see ``infinity_lit.data.datamodule``), so
    Lightning's distributed sampler is not involved.

    A sample whose image fails to decode, and each sample lost in a damaged shard (truncated, a corrupt tar
    header, unreadable), is skipped with a warning naming key and shard (one per damaged shard, saying where
    reading failed and how many samples were lost) and counted in ``skipped_samples``, which
    both LightningModules log to TensorBoard as ``data/skipped_samples``; the rest of the shard and of the
    batch is still read. With ``strict`` the first one raises ``ValueError`` naming shard and key and what
    to do.

    Args:
        data_dir: directory of shards built by ``infinity-lit data openmoji|folder --out DIR``.
        resolution: side of the square images in pixels (positive, even; the tokenizer checks its stride).
        batch_size: training batch size per rank.
        num_workers: DataLoader worker processes per rank (0 loads in the main process).
        shuffle_buffer: undecoded samples each worker holds for shuffling training data.
        strict: raise at the first undecodable image or damaged shard instead of skipping.
        seed: seed of the training order (combined with the epoch number); None: the run's seed
            (``seed_everything``, ``training.seeding.run_seed``), so two seeds give two data orders.
        val_batch_size: validation/test batch size per rank; ``None`` uses ``batch_size``.
        pin_memory: pin batches in page-locked memory when CUDA is available.
        aspect_ratio_buckets: on a data set built with aspect-ratio buckets (``data folder --aspect_ratios``),
            batch by bucket, each batch (B, 3, h, w) at its bucket's size (``BucketedShardDataset``); False
            crops every image to ``resolution``² instead. A square data set is unaffected.

    Raises:
        ValueError: bad resolution or sizes. FileNotFoundError (at ``setup``): no data folder, or no shards
            in it; ValueError (at ``setup``, shards without a manifest): none of their samples can be read;
            the messages say how to build data. ValueError (while iterating): ``strict`` and a skipped
            sample, or a pass of a loader that skipped samples and could read none (all shards unreadable).
    """

    def __init__(
        self,
        data_dir: str | Path,
        resolution: int = 64,
        batch_size: int = 32,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        strict: bool = False,
        seed: int | None = None,
        val_batch_size: int | None = None,
        pin_memory: bool = True,
        aspect_ratio_buckets: bool = True,
    ) -> None:
        super().__init__()
        check_resolution(resolution)
        if batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise ValueError(f"batch sizes must be ≥ 1, got {batch_size} and {val_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be ≥ 0, got {num_workers}")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.resolution = resolution
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.strict = strict
        self.seed = seed
        self.pin_memory = pin_memory
        self.aspect_ratio_buckets = aspect_ratio_buckets
        self.manifest: dict[str, Any] | None = None
        self._datasets: dict[str, ShardDataset | BucketedShardDataset] = {}
        self._loaders: dict[str, _EpochDataLoader] = {}
        self._skipped_before: dict[str, int] = {}

    def setup(self, stage: str | None = None) -> None:
        """Read the manifest; raises ``FileNotFoundError`` saying how to build data if there is none."""
        self.manifest = read_manifest(self.data_dir)
        built = self.manifest.get("resolution")
        if built is not None and built < self.resolution:
            warnings.warn(
                f"{self.data_dir} was built at {built}px; upsampling to {self.resolution}px", stacklevel=2
            )

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _epoch_fn(self, passes: int) -> int:
        return self.trainer.current_epoch if self.trainer is not None else passes

    def _loader(self, name: str, split: str, *, train: bool, batch_size: int) -> DataLoader:
        if self.manifest is None:
            self.setup()
        rank, world = self._rank_world()
        if name in self._datasets:
            self._skipped_before[name] = (
                self._skipped_before.get(name, 0) + self._datasets[name].skipped_samples
            )
        bucketed = self.aspect_ratio_buckets and bool(self.manifest.get("buckets"))
        dataset = (BucketedShardDataset if bucketed else ShardDataset)(
            self.data_dir,
            split,
            self.resolution,
            batch_size,
            train=train,
            rank=rank,
            world_size=world,
            num_workers=self.num_workers,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed if self.seed is not None else run_seed(),
            strict=self.strict,
        )
        self._datasets[name] = dataset
        loader = _EpochDataLoader(
            dataset,
            self._epoch_fn,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
        )
        self._loaders[name] = loader
        return loader

    def close_loaders(self) -> None:
        """End the DataLoader workers of every pass still open."""
        for loader in self._loaders.values():
            loader.close()

    def teardown(self, stage: str) -> None:
        """End the DataLoader workers of every pass still open (a fit that ended by an exception)."""
        self.close_loaders()
        super().teardown(stage)

    def on_exception(self, exception: BaseException) -> None:
        """A fit, validation or test ended by an exception: end the workers of every open pass at once.

        A pass abandoned mid-epoch keeps its worker processes (and torch keeps their pids registered for its
        SIGCHLD handler) until its iterator is garbage-collected, which the exception's traceback delays. A
        worker that died (the out-of-memory killer) would then be raised again by that handler at whatever
        the process does next, whenever any child process exits.
        """
        self.close_loaders()

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; ``len()`` = batches per rank per epoch (equal on all ranks)."""
        return self._loader("train", "train", train=True, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        """The "val" split in order, each sample once per epoch across ranks and workers."""
        return self._loader("val", "val", train=False, batch_size=self.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Same samples as ``val_dataloader`` (the data sets have no separate test split)."""
        return self._loader("test", "val", train=False, batch_size=self.val_batch_size)

    @property
    def skipped_by_loader(self) -> dict[str, int]:
        """Samples skipped so far (undecodable images, samples lost in damaged shards), per loader ("train",
        "val", "test"), in this process."""
        names = set(self._datasets) | set(self._skipped_before)
        return {
            n: self._skipped_before.get(n, 0)
            + (self._datasets[n].skipped_samples if n in self._datasets else 0)
            for n in sorted(names)
        }

    @property
    def skipped_samples(self) -> int:
        """Total samples skipped so far by this rank's loaders (all workers, all epochs): undecodable images
        and samples lost in damaged shards."""
        return sum(self.skipped_by_loader.values())

    @property
    def bucket_sizes(self) -> dict[str, tuple[int, int]]:
        """(height, width) of each aspect-ratio bucket the batches come in (empty: square batches of
        ``resolution``)."""
        if self.manifest is None:
            self.setup()
        assert self.manifest is not None
        if not self.aspect_ratio_buckets:
            return {}
        return {name: tuple(b["size"]) for name, b in (self.manifest.get("buckets") or {}).items()}

    @property
    def num_samples(self) -> dict[str, int]:
        """Samples per split according to the manifest."""
        if self.manifest is None:
            self.setup()
        assert self.manifest is not None
        return dict(self.manifest["counts"])
