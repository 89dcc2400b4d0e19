"""Building an index from images, and bringing one up to date (``zoo index``, ``--update``).

build_index embeds a folder, files or records and indexes them. With an output folder the
embeddings stream to shards inside it (zoo.index.shards) and the index is built from them
afterwards: memory stays O(batch), a stopped run resumes where it stopped, and in a
multi-device run every process embeds its part. An update rescans the index's root and embeds
only new and changed files, with the index's own model and (unless the trainer says otherwise)
its own precision, then saves a new version. The index records the precision its vectors were
made at (the trainer's: zoo.model.inference decides it by default).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import lightning as L

from zoo.data.defaults import BATCH_SIZE, NUM_WORKERS
from zoo.data.images import Record, records_from, scan_folder
from zoo.embed.runner import default_trainer, embed, report_skipped
from zoo.errors import ZooError
from zoo.index import folder as indexdir
from zoo.index.core import ZooIndex
from zoo.index.persist import current_precision, current_runtime
from zoo.index.shards import ShardJob, embed_to_shards, is_primary_process, job_key
from zoo.index.store import common_root, file_state
from zoo.metrics.hubness import DEFAULT_WEIGHT
from zoo.model.identity import model_identity
from zoo.model.module import ZooModel
from zoo.model.runtime import AUTO, asked_runtime, keep_recorded, runtime_of


def _records(images, exclude: Optional[Path]) -> tuple[list[Record], Optional[Path]]:
    """Records of a folder, files or records; and the folder they came from, if one."""
    if isinstance(images, (str, os.PathLike)):
        if Path(images).is_dir():
            return scan_folder(images, exclude=exclude), Path(os.path.abspath(images))
        return records_from([images]), None
    if images and isinstance(images[0], Record):
        return list(images), None
    return records_from(images), None


def build_index(
    images: str | Path | Sequence[str | Path] | Sequence[Record] | None,
    model=None,
    out: Optional[str | Path] = None,
    factory: str = "auto",
    overwrite: bool = False,
    update: bool = False,
    trainer: Optional[L.Trainer] = None,
    batch_size: int = BATCH_SIZE,
    num_workers: int = NUM_WORKERS,
    decode: str = "auto",
    shard_size: int = 4096,
    channels_last: Optional[bool] = None,
    hubness: int = 0,
    hubness_weight: float = DEFAULT_WEIGHT,
    **model_kwargs,
) -> Optional[ZooIndex]:
    """Embed images (a folder, files, or records) and index them; saved to ``out`` if given.

    ``model``: a ZooModel, or None to build ``ZooModel(**model_kwargs)`` (e.g. backbone="vgg16").
    ``update``: bring ``out`` up to date with its root folder: embed new and changed files,
    drop the ones that disappeared, with the index's own model.

    With ``out``, embeddings stream to shards inside it (zoo.index.shards) and the index is built
    from them afterwards: memory stays O(batch), a stopped run resumes where it stopped, and
    in a multi-device run every process embeds its part; only the first returns the index
    (the others return None). ``hubness`` K > 0: rank searches by cosine minus ``hubness_weight``
    x each item's density over its K nearest (zoo.index.hubness); an update keeps the index's own.
    """
    out_path = Path(os.path.abspath(out)) if out is not None else None
    if trainer is None:  # an update: the index's own precision and runtime (a trainer says otherwise)
        on_index = update and out_path is not None
        trainer = default_trainer(recorded=current_precision(out_path) if on_index else None,
                                  runtime=keep_recorded(AUTO, current_runtime(out_path) if on_index else None))
    run = dict(trainer=trainer, batch_size=batch_size, num_workers=num_workers, decode=decode, shard_size=shard_size,
               channels_last=channels_last)
    primary = is_primary_process()
    if update:
        if out_path is None:
            raise ZooError("--update needs --out, the index to update")
        if hubness or hubness_weight != DEFAULT_WEIGHT:
            raise ZooError("--update keeps the index's own --hubness setting; to change it, rebuild with --overwrite")
        if not primary:  # rank 0 holds the lock; this process embeds its part of the same work
            return _update(out_path, images, model, **run)
        indexdir.check_target(out_path, overwrite=False, update=True)
        with indexdir.locked(out_path):
            return _update(out_path, images, model, **run)
    sources = (Path(images),) if isinstance(images, (str, os.PathLike)) else ()
    if out_path is not None and primary:
        indexdir.check_target(out_path, overwrite, update=False, sources=sources)  # before any expensive work
    records, root = _records(images, exclude=out_path)
    model = (model or ZooModel(**model_kwargs)).build()
    index = ZooIndex.create(model, factory, root=root or common_root([r.path for r in records]), expected=len(records),
                            precision=str(trainer.precision), runtime=runtime_of(trainer, len(records)),
                            hubness=hubness, hubness_weight=hubness_weight)
    if out_path is None:
        return _embed_into(index, model, records, trainer, batch_size, num_workers, decode, require=True)
    if not primary:
        _embed_shards(index, out_path, model, records, **run)
        return None
    if factory == "auto":
        print(f"zoo: --factory auto: {index.meta['factory']} for {len(records)} files of dim {model.embedding_dim}", file=sys.stderr)
    with indexdir.locked(out_path):
        indexdir.check_target(out_path, overwrite, update=False, sources=sources)  # again, now under the lock
        job = _embed_shards(index, out_path, model, records, **run)
        if len(index) == 0:
            job.remove()
            raise ZooError("no usable images to index")
        index.save(out_path, overwrite=True, _locked=True)
        job.remove()
    return index


def _embed_into(index: ZooIndex, model, records: list[Record], trainer, batch_size: int, num_workers: int,
                decode: str = "auto", require: bool = False) -> ZooIndex:
    emb = embed(model, records, trainer=trainer, batch_size=batch_size, num_workers=num_workers, decode=decode) if records else None
    if emb is None or len(emb.records) == 0:
        if require:
            raise ZooError("no usable images to index")
        return index
    index.add(emb.vectors, emb.records)
    index.add_skipped(emb.skipped)
    return index


def _embed_shards(index: ZooIndex, out: Path, model, records: list[Record], trainer, batch_size: int,
                  num_workers: int, decode: str, shard_size: int, channels_last: Optional[bool] = None):
    """Embed ``records`` into shards in ``out`` (resuming an earlier run of the same job); the
    first process then adds them to ``index``. Returns the job."""
    made_by = {**model_identity(model), "precision": str(trainer.precision)}  # a resumed job keeps its precision
    job = ShardJob(out, job_key(made_by, records), len(records), model.embedding_dim)
    primary = is_primary_process()
    if primary:
        job.prepare()
    if records:
        embed_to_shards(model, records, job, trainer=trainer, batch_size=batch_size, num_workers=num_workers,
                        decode=decode, shard_rows=shard_size, channels_last=channels_last)
    if primary and records:
        index.add_shards(job, records)
        skipped = [(records[p].path, reason) for p, reason in job.skipped()]
        index.add_skipped(skipped)
        if skipped:
            report_skipped(skipped)
    return job


def _update(out: Path, images, model, **run) -> Optional[ZooIndex]:
    """``--update``: ``run`` holds build_index's run options (trainer, loader, shards)."""
    primary = is_primary_process()
    trainer = run["trainer"]
    index = ZooIndex.load(out, mmap=False).writable_copy()
    if images is not None and Path(os.path.realpath(images)) != Path(os.path.realpath(index.root)):
        raise ZooError(f"{out} indexes {index.root}; --update rescans that folder (give no --images, or that one)")
    if index.store.has_frames():
        raise ZooError(f"{out} indexes video frames; --update works on image folders (rebuild it with --overwrite)")
    if model is not None:
        index.check_model(model.build())
    model = index.model()
    records = scan_folder(index.root, exclude=out)
    known = {r["path"]: r for r in index.store.rows()}
    skipped = {p: (size, mtime) for p, _, size, mtime in index.store.skipped()}
    new, changed, retried, seen = [], [], [], set()
    for r in records:
        rel = index.relative(r.path)
        seen.add(rel)
        state = file_state(r.path)
        if rel in known:
            row = known[rel]
            if (row["size"], row["mtime_ns"]) != state:  # changed since it was embedded
                changed.append(row["id"])
                new.append(r)
        elif rel in skipped:
            if skipped[rel] != state:  # a bad file that changed since: try it again
                retried.append(rel)
                new.append(r)
        else:
            new.append(r)
    gone = [row["id"] for rel, row in known.items() if rel not in seen]
    if primary and new and str(trainer.precision) != index.precision:
        print(f"zoo: note: {out} was built at precision {index.precision}; this update embeds at {trainer.precision} "
              f"(give --trainer.precision {index.precision} to match)", file=sys.stderr, flush=True)
    if primary and new and asked_runtime(trainer) != index.runtime:
        print(f"zoo: note: {out} was built with runtime {index.runtime}; this update asks for {asked_runtime(trainer)} "
              f"(give --runtime {index.runtime} to match)", file=sys.stderr, flush=True)
    if not primary:
        _embed_shards(index, out, model, new, **run)
        return None
    index.remove(gone + changed)
    index.store.unskip([p for p in skipped if p not in seen] + retried)
    still_bad = sum(1 for p in skipped if p in seen) - len(retried)
    print(f"zoo: {out}: {len(new) - len(changed) - len(retried)} new, {len(changed) + len(retried)} changed, "
          f"{len(gone)} removed file(s); {len(known)} indexed before"
          + (f"; {still_bad} unusable file(s) unchanged since they were reported" if still_bad else ""),
          file=sys.stderr, flush=True)
    job = _embed_shards(index, out, model, new, **run)
    index.save(out, _locked=True)
    job.remove()
    return index
