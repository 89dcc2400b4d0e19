"""Embeddings streamed to disk in shards: memory stays O(batch) whatever the number of images,
every rank of a multi-device run writes its own shards, and a run that stops (crash, kill,
Ctrl-C) starts again where its last complete shard ended.

    OUT/.embed-<key>/               inside the index folder being written; removed when done
      job.json                      what is being embedded: the key, the number of records
      r000-000001.vectors.npy       (n, D) embeddings of one shard, rank 0, shard 1
      r000-000001.skipped.json      [[position, reason], ...]: files that are not usable images
      r000-000001.index.npy         (n,) int64 positions in the record list; written last, so
                                    a shard exists once this file does

The key is a hash of the model's identity and the records (path, size and modification time
of each file), so a run resumes only the same job; the work of any other job is discarded.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from zoo.data.defaults import BATCH_SIZE, NUM_WORKERS
from zoo.data.images import Record
from zoo.embed.runner import default_trainer, describe_run, make_loader
from zoo.errors import ZooError
from zoo.index.folder import WORK
from zoo.index.store import file_state
from zoo.io import atomic_path, read_json, write_json
from zoo.model.module import ZooModel

PREFIX = ".embed-"
_SHARD = re.compile(r"^r(\d{3,})-(\d{6,})\.index\.npy$")


def job_key(model_identity: dict, records: Sequence[Record]) -> str:
    """Hash of what decides the embeddings: the model and every input file as it is now."""
    h = hashlib.sha256(json.dumps(model_identity, sort_keys=True, default=str).encode())
    for r in records:
        state = file_state(r.path) if r.frame is None else (r.frame, r.time)
        h.update(f"{r.path}\0{state}\0{r.label}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


def is_primary_process() -> bool:
    """True in the process that owns the run: rank 0 of a multi-device run (whose launcher sets
    RANK / LOCAL_RANK / NODE_RANK in the others), or a single process."""
    return all(int(os.environ.get(v, "0") or 0) == 0 for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"))


class ShardJob:
    """The shards of one embedding job in ``out/.embed-<key>``."""

    def __init__(self, out: Path, key: str, n_records: int, dim: int):
        self.out, self.key, self.n, self.dim = Path(out), key, n_records, dim  # dim: of the model's embeddings
        self.folder = self.out / f"{PREFIX}{key}"

    # ---- the job's folder -----------------------------------------------------------------
    def prepare(self) -> None:
        """Create the folder (primary process, under the index lock); drop other jobs' work."""
        if self.folder.is_symlink() or (self.folder.exists() and not self.folder.is_dir()):
            raise ZooError(f"{self.folder} is not a folder zoo made; remove it")
        for e in self.out.iterdir() if self.out.is_dir() else ():
            if WORK.match(e.name) and e.name != self.folder.name and e.is_dir() and not e.is_symlink():
                print(f"zoo: discarding the unfinished embeddings of an earlier run with other files or another model ({e.name})",
                      file=sys.stderr, flush=True)
                shutil.rmtree(e, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "job.json").exists():
            write_json(self.folder / "job.json", {"key": self.key, "records": self.n})

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def shards(self) -> list[str]:
        """Complete shards, by (rank, number): their common file-name stem."""
        if not self.folder.is_dir():
            return []
        found = []
        for e in self.folder.iterdir():
            m = _SHARD.match(e.name)
            if m:
                found.append((int(m.group(1)), int(m.group(2)), e.name[: -len(".index.npy")]))
        return [stem for _, _, stem in sorted(found)]

    def next_number(self, rank: int) -> int:
        numbers = [int(_SHARD.match(f"{s}.index.npy").group(2)) for s in self.shards()
                   if int(_SHARD.match(f"{s}.index.npy").group(1)) == rank]
        return max(numbers, default=0) + 1

    # ---- what is done -----------------------------------------------------------------------
    def _damaged(self, name: str, why: str) -> ZooError:
        return ZooError(f"{self.folder / name} is damaged ({why}); remove {self.folder} to embed again from the start")

    def _load(self, name: str, mmap: bool = False) -> np.ndarray:
        """A shard's array; plain numbers only (never unpickled)."""
        try:
            a = np.load(self.folder / name, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise self._damaged(name, " ".join(str(e).split())[:80]) from None
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "iuf":
            raise self._damaged(name, "not an array of numbers")
        return a

    def positions(self, stems: Optional[list[str]] = None) -> list[np.ndarray]:
        out = []
        for s in self.shards() if stems is None else stems:
            p = self._load(f"{s}.index.npy")
            if p.ndim != 1 or p.dtype.kind not in "iu" or (len(p) and (p.min() < 0 or p.max() >= self.n)):
                raise self._damaged(f"{s}.index.npy", f"positions outside 0..{self.n - 1}")
            out.append(p.astype(np.int64))
        return out

    def skipped(self) -> list[tuple[int, str]]:
        out: dict[int, str] = {}
        for s in self.shards():
            try:
                rows = read_json(self.folder / f"{s}.skipped.json", "a list of skipped files")
                pairs = [(int(pos), str(reason)) for pos, reason in rows]
            except (ZooError, ValueError, TypeError, OverflowError, OSError):
                raise self._damaged(f"{s}.skipped.json", "not a list of [position, reason]") from None
            for pos, reason in pairs:
                if not 0 <= pos < self.n:
                    raise self._damaged(f"{s}.skipped.json", f"positions outside 0..{self.n - 1}")
                out.setdefault(pos, reason)
        return sorted(out.items())

    def remaining(self) -> list[int]:
        """Positions of the records no complete shard holds (embedded or skipped)."""
        done = np.zeros(self.n, dtype=bool)
        for p in self.positions():
            done[p] = True
        for pos, _ in self.skipped():
            done[pos] = True
        return np.flatnonzero(~done).tolist()

    # ---- reading back, in record order ----------------------------------------------------
    def _layout(self) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """Memory-mapped vectors of every shard, and for each embedded record in record order:
        its position, its shard and its row there (a record written twice counts once).
        Read once per set of shards: count, gather and ordered share it."""
        stems = self.shards()
        if getattr(self, "_read", None) is not None and self._read[0] == stems:
            return self._read[1]
        self._read = (stems, self._read_layout(stems))
        return self._read[1]

    def _read_layout(self, stems: list[str]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        vectors = [self._load(f"{s}.vectors.npy", mmap=True) for s in stems]
        pos = self.positions(stems)
        for s, v, p in zip(stems, vectors, pos):
            if len(p) and (v.ndim != 2 or len(v) != len(p)):
                raise self._damaged(f"{s}.vectors.npy", f"an array of shape {v.shape} for {len(p)} positions")
            if len(p) and v.shape[1] != self.dim:
                raise self._damaged(f"{s}.vectors.npy", f"vectors of dim {v.shape[1]}, not {self.dim}")
        if not pos:
            return vectors, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        all_pos = np.concatenate(pos)
        shard = np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(pos)])
        row = np.concatenate([np.arange(len(p), dtype=np.int64) for p in pos])
        order, first = np.unique(all_pos, return_index=True)  # sorted positions, first copy of each
        return vectors, order, shard[first], row[first]

    def count(self) -> int:
        return len(self._layout()[1])

    def gather(self, which: np.ndarray) -> np.ndarray:
        """Rows ``which`` (indices into the record-ordered embedded rows) as one float32 array."""
        _, _, shard, row = self._layout()
        return self._take(shard[which], row[which])

    def _take(self, shard: np.ndarray, row: np.ndarray) -> np.ndarray:
        """Rows ``row`` of shards ``shard`` as one float32 array; a shard of NaN or infinite
        values is damaged (they would make every search of the index meaningless)."""
        stems, (vectors, *_) = self._read  # what the caller's _layout() read
        out = np.empty((len(shard), self.dim), dtype=np.float32)
        for s in np.unique(shard):
            sel = shard == s
            part = vectors[s][row[sel]].astype(np.float32, copy=False)
            if not np.isfinite(part).all():
                raise self._damaged(f"{stems[s]}.vectors.npy", "non-finite values")
            out[sel] = part
        return out

    def ordered(self, chunk: int = 16384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(positions, vectors) of every embedded record in record order, ``chunk`` rows at a time."""
        _, order, shard, row = self._layout()
        for s in range(0, len(order), chunk):
            yield order[s : s + chunk], self._take(shard[s : s + chunk], row[s : s + chunk])


class ShardWriter(BasePredictionWriter):
    """Writes each rank's embeddings to its own shards of ``rows`` rows as they are made.

    A shard is written atomically (its position file last); what is buffered is written too
    when the run stops on an exception or Ctrl-C, so an interrupted run loses no finished batch.
    """

    def __init__(self, job: ShardJob, rows: int = 4096):
        super().__init__(write_interval="batch")
        self.job, self.rows = job, rows
        self._reset()
        self.rank = 0
        self.number = 1

    def _reset(self) -> None:
        self.positions: list[np.ndarray] = []
        self.vectors: list[np.ndarray] = []
        self.skips: list[tuple[int, str]] = []
        self.buffered = 0

    def on_predict_start(self, trainer, pl_module) -> None:
        self.rank = trainer.global_rank
        self.job.folder.mkdir(parents=True, exist_ok=True)
        self.number = self.job.next_number(self.rank)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.positions.append(prediction["index"].cpu().numpy().astype(np.int64))
        self.vectors.append(prediction["embedding"].cpu().numpy())
        self.skips += [(int(i), str(r)) for i, r in prediction["skipped"]]
        self.buffered += len(self.positions[-1]) + len(prediction["skipped"])
        if self.buffered >= self.rows:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        stem = self.job.folder / f"r{self.rank:03d}-{self.number:06d}"
        positions = np.concatenate(self.positions) if self.positions else np.zeros(0, np.int64)
        vectors = np.concatenate(self.vectors) if self.vectors else np.zeros((0, 0), np.float32)
        with atomic_path(f"{stem}.vectors.npy") as tmp:
            _save(tmp, np.ascontiguousarray(vectors))
        with atomic_path(f"{stem}.skipped.json") as tmp:
            Path(tmp).write_text(json.dumps(self.skips))
        with atomic_path(f"{stem}.index.npy") as tmp:  # last: the shard now exists
            _save(tmp, positions)
        self.number += 1
        self._reset()

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self.flush()
        trainer.strategy.barrier("zoo-shards")  # every rank's shards are on disk

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.flush()


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def embed_to_shards(
    model: ZooModel,
    records: Sequence[Record],
    job,
    trainer: Optional[L.Trainer] = None,
    batch_size: int = BATCH_SIZE,
    num_workers: int = NUM_WORKERS,
    decode: str = "auto",
    shard_rows: int = 4096,
    channels_last: Optional[bool] = None,
) -> None:
    """Embed the records that ``job`` (ShardJob) does not hold yet into its shards.

    Every process of a multi-device run calls this with the same records: each embeds its
    part (Lightning's distributed sampler) and writes its own shards; nothing is gathered.
    """
    if shard_rows < 1:
        raise ZooError(f"--shard_size {shard_rows}: must be 1 or more")
    model.build()
    model.channels_last = channels_last  # None: as zoo.model.inference decides
    trainer = trainer or default_trainer()
    todo = job.remaining()
    done = len(records) - len(todo)
    if is_primary_process() and done:
        print(f"zoo: resuming: {done} of {len(records)} images were embedded by an earlier run", file=sys.stderr, flush=True)
    if not todo:
        return
    loader, mode = make_loader(model, records, trainer, batch_size, num_workers, decode, indices=todo)
    if is_primary_process():
        print(describe_run(trainer, model, len(todo), mode, batch_size, num_workers), file=sys.stderr, flush=True)
    writer = ShardWriter(job, rows=shard_rows)
    trainer.callbacks.append(writer)
    try:
        trainer.predict(model, dataloaders=loader, return_predictions=False)
    finally:
        trainer.callbacks.remove(writer)
