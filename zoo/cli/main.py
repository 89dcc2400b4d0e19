"""The ``zoo`` command: LightningCLI with one Trainer method per extra subcommand.

    zoo fit --config configs/triplet/resnet50.yaml
    zoo index --images DIR --out my.index --backbone resnet50
    zoo search --query q.jpg --index my.index -k 10 --grid out.png
    zoo compare --images a.jpg b.jpg c.jpg [--matrix out]
    zoo duplicates --images DIR --threshold 0.95
    zoo benchmark --backbone resnet50 vgg16
    zoo list 'res*'
    zoo serve --index my.index [--host 127.0.0.1 --port 8000]

Options of the model (``--model.*``), the trainer (``--trainer.*``: accelerator, devices,
precision, ...) and the data (``--data.*``) come from the classes' signatures.
"""
from __future__ import annotations

import json as _json
import logging
import pickle
import signal
import sys
import threading
import warnings
from typing import Any, Literal, Optional, Union

import lightning as L
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from zoo.cli.help import DESCRIPTION, FULL_HELP, ZooArgumentParser
from zoo.data.datamodule import ZooDataModule
from zoo.dedup.compare import run_compare
from zoo.dedup.duplicates import run_duplicates, undo_quarantine
from zoo.embed.progress import StderrProgressBar
from zoo.embed.runner import inference_precision
from zoo.errors import ZooError
from zoo.evaluate.benchmark import Architecture, run_benchmark
from zoo.evaluate.calibration import calibrated_threshold, run_calibrate
from zoo.evaluate.video_benchmark import run_video_benchmark
from zoo.index.build import build_index
from zoo.index.core import check_k, load_index
from zoo.io import refuse_overwrite
from zoo.model.listing import list_registered
from zoo.model.module import ZooModel, model_config
from zoo.model.restore import load_model
from zoo.model.start_validation import StartValidation


def resolve_model(model: ZooModel, backbone: Optional[str] = None, checkpoint: Optional[str] = None) -> ZooModel:
    """The model a command embeds with: a trained checkpoint, the --model.* config, or that
    config with another backbone (``--backbone`` shortcut)."""
    if checkpoint:
        return load_model(checkpoint)
    if backbone and backbone != model.hparams.backbone:
        return ZooModel(**{**model_config(model.hparams), "backbone": backbone})
    return model


class ZooTrainer(L.Trainer):
    """Lightning's Trainer plus zoo's commands: every batch model run goes through it."""

    def index(
        self,
        model: ZooModel,
        images: Optional[str] = None,
        out: str = "zoo.index",
        backbone: Optional[str] = None,
        checkpoint: Optional[str] = None,
        factory: str = "auto",
        overwrite: bool = False,
        update: bool = False,
        video: Optional[str] = None,
        every: int = 1,
        batch_size: int = 32,
        num_workers: int = 2,
        decode: str = "auto",
        shard_size: int = 4096,
        channels_last: Optional[bool] = None,
        datamodule: Any = None,
    ) -> None:
        """Embed a folder of images (or a video's frames) into a persistent FAISS index.

        Embeddings stream to shards inside --out as they are made, so memory does not grow with
        the number of images and a stopped run, started again with the same command, resumes
        from its last complete shard. With --trainer.devices N (and --trainer.num_nodes, with
        --out on a shared file system) every process embeds its part.

        Args:
            images: folder of images (recursive; class = parent folder name).
            out: index folder to write.
            backbone: shortcut for --model.backbone.
            checkpoint: a trained zoo checkpoint to embed with, instead of --model.*.
            factory: FAISS index_factory string (Flat = exact; e.g. HNSW32, IVF1024,Flat, IVF1024,SQ8,
                SQfp16), or auto: Flat below 50k images, else IVF (Flat/SQ8/PQ codes by memory).
            overwrite: replace an existing index.
            update: bring the index up to date with its folder: new and changed files, removed ones.
            video: index this video's frames instead of a folder.
            every: with --video, keep every N-th frame.
            batch_size: images per forward pass (on a GPU, 256 or more keeps it busy).
            num_workers: loader processes that read and decode files (on a GPU machine, about
                the number of CPU cores).
            decode: where JPEGs are decoded: auto (on the GPU when the model runs on CUDA, else
                in the loader workers), cpu, or device. Files the device cannot decode (PNG,
                progressive JPEG, EXIF-rotated, ...) are decoded by the workers in the same run.
            shard_size: embeddings per shard written to disk (the most a crash can lose).
            channels_last: channels-last memory layout for the forward (default: on CUDA).
        """
        if update and video is not None:
            raise ZooError("--update works on image folders; rebuild a video index with --overwrite")
        if (images is None) == (video is None) and not update:
            raise ZooError("give a folder (--images DIR) or a video (--video FILE)")
        if video is not None:
            from zoo.data.video import video_records

            records = video_records(video, every=every)
        else:
            records = images
        index = build_index(
            records, None if update else resolve_model(model, backbone, checkpoint), out=out, factory=factory,
            overwrite=overwrite, update=update, trainer=self, batch_size=batch_size, num_workers=num_workers,
            decode=decode, shard_size=shard_size, channels_last=channels_last,
        )
        if index is None:  # another process of a multi-device run: the first one builds the index
            return
        print(f"zoo: indexed {len(index)} items of {index.root} with {index.describe()} -> {out}")

    def search(
        self,
        model: ZooModel,
        query: list[str],
        index: str = "zoo.index",
        k: int = 10,
        json: bool = False,
        grid: Optional[str] = None,
        overwrite: bool = False,
        nprobe: Optional[int] = None,
        ef_search: Optional[int] = None,
        backbone: Optional[str] = None,
        checkpoint: Optional[str] = None,
        datamodule: Any = None,
    ) -> None:
        """Rank the indexed images by cosine similarity to each query image.

        Args:
            query: query image file(s).
            index: index folder made by `zoo index`.
            k: number of results.
            json: print JSON instead of a table.
            grid: save a PNG of each query and its top k.
            nprobe: IVF indexes: inverted lists to visit (default: the index's own, ~0.95 recall@10).
            ef_search: HNSW indexes: search breadth (default: the index's own).
            backbone: embed queries with this backbone (must match the index's).
            checkpoint: embed queries with this trained checkpoint (must match the index's).
        """
        check_k(k)
        if grid:
            refuse_overwrite(grid, overwrite)
        idx = load_index(index)
        idx.set_search(nprobe=nprobe, ef_search=ef_search)
        qmodel = resolve_model(model, backbone, checkpoint).build() if (backbone or checkpoint) else None
        results = idx.search_many(query, k=k, model=qmodel, trainer=self)  # [(query path, hits)]
        if json:
            out = [{"query": q, "model": idx.meta["model"]["architecture"],
                    "weights": idx.meta["model"]["weights"], "results": [h.__dict__ for h in hits]}
                   for q, hits in results]
            print(_json.dumps(out, indent=2))
        else:
            print(f"index: {index} ({len(idx)} items, {idx.describe()})")
            for q, hits in results:
                print(f"\nquery: {q}")
                print(f"{'rank':>4}  {'cosine':>7}  path")
                for h in hits:
                    extra = f"  [frame {h.frame}, {h.time:.2f}s]" if h.frame is not None else ""
                    print(f"{h.rank:>4}  {h.similarity:7.4f}  {h.path}{extra}")
        if grid:
            from zoo.report.plots import topk_grid

            topk_grid([(q, None, hits) for q, hits in results], grid,
                      title=f"{idx.describe()}")
            print(f"zoo: grid -> {grid}", file=sys.stderr)

    def compare(
        self,
        model: ZooModel,
        images: list[str],
        matrix: Optional[str] = None,
        overwrite: bool = False,
        backbone: Optional[str] = None,
        checkpoint: Optional[str] = None,
        batch_size: int = 32,
        num_workers: int = 2,
        datamodule: Any = None,
    ) -> None:
        """Similarity in [0, 1] of each pair of images (1 = same content).

        Args:
            images: two or more image files, or a folder.
            matrix: write the all-versus-all cosine distance matrix to MATRIX.csv and MATRIX.npy.
        """
        run_compare(resolve_model(model, backbone, checkpoint), images, matrix=matrix, overwrite=overwrite,
                    trainer=self, batch_size=batch_size, num_workers=num_workers)

    def duplicates(
        self,
        model: ZooModel,
        images: Optional[str] = None,
        index: Optional[str] = None,
        threshold: Union[float, Literal["auto"]] = 0.95,
        calibration: str = "zoo-calibration.json",
        background: Optional[str] = None,
        background_k: int = 10,
        out: str = "duplicates",
        overwrite: bool = False,
        exact_only: bool = False,
        plots: bool = False,
        move_to: Optional[str] = None,
        undo: Optional[str] = None,
        exact: bool = False,
        approximate: bool = False,
        nprobe: Optional[int] = None,
        grouping: str = "star",
        backbone: Optional[str] = None,
        checkpoint: Optional[str] = None,
        batch_size: int = 32,
        num_workers: int = 2,
        datamodule: Any = None,
    ) -> None:
        """Find exact and near-duplicate groups in a folder or an index.

        Args:
            images: folder to scan (exact duplicates by hash first, then near duplicates).
            index: an existing index to search for near duplicates (no model run).
            threshold: cosine similarity at or above which two images are near duplicates, or auto:
                the model's threshold from `zoo calibrate` (read from --calibration).
            calibration: the calibration file that --threshold auto reads.
            background: a folder of unrelated images, or an index of the same model: a pair's score
                becomes its cosine minus the mean of both images' similarity to their k-th nearest
                background image, and --threshold applies to that score (e.g. 0.1).
            background_k: k of --background.
            out: output folder for groups.json, pairs.csv, groups.csv, similarity histogram.
            exact_only: only identical files (by hash), no model.
            plots: also save a PNG per group.
            move_to: quarantine all but one image of each group into this folder (with a manifest).
            undo: a quarantine manifest to undo (moves the files back).
            exact: search near duplicates exactly whatever the size (default: exact up to about 20k
                images, an inverted file with calibrated recall above).
            approximate: use the inverted file whatever the size.
            nprobe: nearest lists each image probes in the inverted file (default: the fewest that
                reach 0.98 recall on a calibration; more: higher recall, slower).
            grouping: star (every member within the threshold of the group's centre) or components
                (chains of near duplicates merge); --move-to keeps the best file of each group.
        """
        if undo:
            undo_quarantine(undo)
            return
        if exact and approximate:
            raise ZooError("--exact and --approximate exclude each other")
        model = resolve_model(model, backbone, checkpoint)
        if threshold == "auto":
            threshold = calibrated_threshold(calibration, model if index is None else None, index)
        run_duplicates(
            model, images=images, index=index, threshold=threshold, out=out, background=background,
            background_k=background_k,
            overwrite=overwrite, exact_only=exact_only, plots=plots, move_to=move_to, trainer=self,
            batch_size=batch_size, num_workers=num_workers,
            search="exact" if exact else "ivf" if approximate else "auto", nprobe=nprobe, grouping=grouping,
        )

    def calibrate(
        self,
        model: ZooModel,
        images: str,
        sample: int = 200,
        precision: float = 0.95,
        copies: int = 1,
        edits: Union[str, list[dict[str, Any]]] = "copyset",
        calibration: str = "zoo-calibration.json",
        plot: Optional[str] = None,
        seed: int = 0,
        overwrite: bool = False,
        backbone: Optional[str] = None,
        checkpoint: Optional[str] = None,
        batch_size: int = 32,
        num_workers: int = 2,
        datamodule: Any = None,
    ) -> None:
        """Find the model's copy-detection threshold for a target precision on your own photos.

        Args:
            images: a folder of your photos; a seeded sample gets synthetic edited copies.
            sample: how many photos to sample.
            precision: the pair precision the threshold must reach (the recall there is reported).
            copies: edited copies per photo.
            edits: the copy edits: a preset of zoo.augment (copyset, copydetect) or a list of {name, args, p}.
            calibration: the JSON file the threshold is merged into, keyed by the model's identity;
                `zoo duplicates --threshold auto` reads it.
            plot: precision/recall curve PNG (default: beside the calibration file).
            seed: seed of the sample and of the edits.
            overwrite: replace this model's existing calibration (and plot).
        """
        run_calibrate(resolve_model(model, backbone, checkpoint), images, sample=sample, precision=precision, edits=edits,
                      copies=copies, calibration=calibration, plot=plot, seed=seed, overwrite=overwrite, trainer=self,
                      batch_size=batch_size, num_workers=num_workers)

    def benchmark(
        self,
        model: ZooModel,
        backbone: Optional[list[str]] = None,
        head: Optional[list[str]] = None,
        checkpoint: Optional[list[str]] = None,
        architectures: Optional[list[dict[str, Any]]] = None,
        images: Optional[str] = None,
        query: Optional[str] = None,
        gallery: Optional[str] = None,
        protocol: str = "auto",
        query_fraction: float = 0.2,
        seed: int = 0,
        k: int = 10,
        out: str = "benchmark-results",
        overwrite: bool = False,
        samples: int = 3,
        wandb: bool = False,
        wandb_project: str = "zoo",
        video: Optional[str] = None,
        window: int = 5,
        make_examples: int = 0,
        twin_threshold: float = 0.9,
        batch_size: int = 32,
        num_workers: int = 2,
        datamodule: Any = None,
    ) -> None:
        """Compare architectures (backbone x head, or checkpoints) on the same images.

        Args:
            backbone: backbones to compare, each with the --model.* settings (default: --model.backbone).
            head: heads to combine with each backbone (default: --model.head).
            checkpoint: trained zoo checkpoints to compare as well.
            architectures: a list of --model.* settings, one per architecture (from a config file).
            images: a labelled folder (class = parent folder); default: the built-in digits demo set.
            query: a folder of queries, searched against --gallery (protocol query-gallery), or the
                example images searched in --video (with truth.csv: file,frame).
            gallery: the folder searched by --query.
            protocol: auto, loo (leave-one-out), split (seeded stratified query/gallery split), query-gallery.
            query_fraction: share of each class used as queries with protocol split.
            k: depth of the top-k confusion and of the sample grids.
            out: output folder (results.csv, results.json, report.md, PNG charts and grids).
            samples: sample queries (and worst queries) per architecture shown in the top-k grids.
            wandb: also log to Weights & Biases: one run per architecture in a group, plus a
                comparison run (offline under --out unless W&B is set up).
            video: video protocol: search every frame of this video with the --query examples.
            window: video protocol: a result within +-window frames of the true frame counts.
            make_examples: video protocol: first write N examples (evenly spaced frames, cropped,
                brightness changed, JPEG) and their truth.csv into --query.
            twin_threshold: cosine at which two images of the set count as near-identical twins.
        """
        archs = Architecture.from_cli(model, backbone, head, checkpoint, architectures)
        if video is not None:
            if images is not None or gallery is not None:
                raise ZooError("--video takes --query EXAMPLES (with truth.csv), not --images or --gallery")
            run_video_benchmark(
                archs, video=video, query=query, window=window, k=k, out=out, overwrite=overwrite, samples=samples,
                use_wandb=wandb, wandb_project=wandb_project, trainer=self, batch_size=batch_size,
                num_workers=num_workers, make=make_examples, seed=seed,
            )
            return
        run_benchmark(
            archs, images=images, query=query, gallery=gallery, protocol=protocol, query_fraction=query_fraction,
            seed=seed, k=k, out=out, overwrite=overwrite, samples=samples, use_wandb=wandb,
            wandb_project=wandb_project, trainer=self, batch_size=batch_size, num_workers=num_workers,
            twin_threshold=twin_threshold,
        )

    def export(
        self,
        model: ZooModel,
        checkpoint: Optional[str] = None,
        format: str = "onnx",
        out: Optional[str] = None,
        overwrite: bool = False,
        backbone: Optional[str] = None,
        opset: int = 17,
        datamodule: Any = None,
    ) -> None:
        """Export the embedding model (preprocessed batch -> L2-normalised embedding) to ONNX or TorchScript.

        Args:
            checkpoint: a trained zoo checkpoint (default: the --model.* config).
            format: onnx or torchscript.
            out: the model file to write (default: the checkpoint's or architecture's name + .onnx/.pt);
                its preprocessing and identity go to OUT.json.
            overwrite: replace existing files.
            backbone: shortcut for --model.backbone.
            opset: ONNX opset version.
        """
        from zoo.model.export import export_model

        export_model(resolve_model(model, backbone, checkpoint), format=format, out=out, overwrite=overwrite,
                     opset=opset)

    def serve(
        self,
        model: ZooModel,
        index: str = "zoo.index",
        host: str = "127.0.0.1",
        port: int = 8000,
        token: Optional[str] = None,
        duplicates: Optional[str] = None,
        max_upload_mb: float = 20.0,
        threads: int = 1,
        allowed_hosts: Optional[list[str]] = None,
        max_pixels: int = 40_000_000,
        datamodule: Any = None,
    ) -> None:
        """Serve searches over HTTP: a JSON API (docs at /docs) and a web page; the index's model loads once.

        Args:
            index: index folder made by `zoo index`.
            host: address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
            port: TCP port (0: any free port; the address is printed on stderr).
            token: require `Authorization: Bearer TOKEN` on the API (default: env ZOO_TOKEN).
            duplicates: a `zoo duplicates` result (DIR or DIR/groups.json) to browse.
            max_upload_mb: largest image upload accepted, in MiB.
            threads: CPU threads of a forward pass (requests take turns on the one model).
            allowed_hosts: more names the server may be reached by (the Host header), e.g. [photos.lan];
                without them only its own addresses and, on loopback, localhost are answered.
            max_pixels: largest image an upload may decode to (a JPEG after its draft reduction); larger ones get 413.
        """
        from zoo.serve.app import run_server

        run_server(index, host=host, port=port, token=token, duplicates=duplicates, max_upload_mb=max_upload_mb,
                   threads=threads, allowed_hosts=allowed_hosts or (), max_pixels=max_pixels)

    def list_registered(self, model: ZooModel = None, pattern: str = "*", timm: bool = False, datamodule: Any = None) -> None:
        """List registered backbones and heads (wildcards allowed, e.g. 'res*') and which weights are offline.

        Args:
            pattern: shell-style wildcard on names.
            timm: also list matching timm model names (any of them works as --model.backbone).
        """
        list_registered(pattern, timm, weights=model.hparams.weights if model is not None else None)


ZooTrainer.list = ZooTrainer.list_registered  # `zoo list`


class FitConfigSaver(SaveConfigCallback):
    """Save the run's config next to its logs, for training only."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


TRAINING_COMMANDS = {"fit", "validate", "test"}
LOG_DIR = "runs"  # where fit/validate/test log (and checkpoint) unless --trainer.default_root_dir says otherwise


def logs_follow_root_dir(trainer) -> None:
    """A logger whose save_dir was left at LOG_DIR writes under --trainer.default_root_dir when it
    is given (CSVLogger by default, WandbLogger with --wandb); checkpoints follow the logger."""
    if trainer.default_root_dir is None:
        return
    for logger in trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]:
        init_args = getattr(logger, "init_args", None)
        if init_args is not None and init_args.get("save_dir") == LOG_DIR:
            init_args.save_dir = str(trainer.default_root_dir)


class ZooCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        extra = {"model", "datamodule"}
        return {
            **LightningCLI.subcommands(),
            "index": extra, "search": extra, "compare": extra, "duplicates": extra,
            "benchmark": extra, "list": extra, "export": extra, "serve": extra, "calibrate": extra,
        }

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        if "weights_only" in cfg and cfg.weights_only is None:  # fit/validate/test --ckpt_path: never unpickled
            cfg.weights_only = True
        if self.subcommand in TRAINING_COMMANDS:
            logs_follow_root_dir(cfg.trainer)
        else:  # no runs/lightning_logs for index, search, ...
            cfg.trainer.logger = False
            if cfg.trainer.precision is None:  # inference on a GPU: bf16 autocast unless asked otherwise
                cfg.trainer.precision = inference_precision(cfg.trainer.accelerator)

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "fit":
            trainer.callbacks.append(StartValidation())  # scores the starting model; keeps it if best
        if type(trainer.progress_bar_callback) is TQDMProgressBar:
            trainer.progress_bar_callback.__class__ = StderrProgressBar
        return trainer

    def after_fit(self) -> None:
        from zoo.report.wandb_log import finish_fit_logger

        finish_fit_logger(self.trainer)
        for cb in self.trainer.checkpoint_callbacks:
            if cb.monitor and cb.best_model_path:
                print(f"zoo: best checkpoint ({cb.monitor} = {float(cb.best_model_score):.4f}): {cb.best_model_path}")
            elif not cb.monitor and (cb.last_model_path or cb.best_model_path):  # saved every epoch
                print(f"zoo: last checkpoint (resume with --ckpt_path): {cb.last_model_path or cb.best_model_path}")

    def before_fit(self) -> None:
        """A WandbLogger (`zoo fit --wandb`) runs offline by default, is named after the
        architecture and records the trainer and data settings."""
        from zoo.report.wandb_log import prepare_fit_logger

        cfg = self.config.get("fit", self.config)
        settings = {key: cfg[key].as_dict() for key in ("trainer", "data") if cfg.get(key) is not None}
        prepare_fit_logger(self.trainer, self.model, _json.loads(_json.dumps(settings, default=str)))

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({
            "trainer.max_epochs": 10,
            "trainer.num_sanity_val_steps": -1,  # validate the starting model in full (zoo.start_validation)
            "trainer.logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": LOG_DIR}},
            "trainer.callbacks": [
                # the best epoch by validation mAP ...
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"monitor": "val/map", "mode": "max", "filename": "best-{epoch}-{step}"}},
                # ... and last.ckpt after every epoch, to resume from (--ckpt_path .../last.ckpt)
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"filename": "last", "enable_version_counter": False}},
            ],
        })


# option names whose values are lists: `--backbone a b c` becomes `--backbone ["a","b","c"]`
LIST_OPTIONS = {
    "benchmark": {"--backbone", "--head", "--checkpoint"},
    "search": {"--query"},
    "compare": {"--images"},
}


# switches that may stand alone: `--overwrite` means `--overwrite true`
SWITCHES = {"--json", "--overwrite", "--update", "--plots", "--exact_only", "--wandb", "--exact", "--approximate"}


def expand_fit_wandb(argv: list[str]) -> list[str]:
    """`zoo fit --wandb [--wandb_project P]`: Lightning's WandbLogger, logging the best checkpoint."""
    if not argv or argv[0] != "fit" or "--wandb" not in argv:
        return argv
    from zoo.report.wandb_log import wandb_logger_args

    rest, i = [], 1
    while i < len(argv):  # `--wandb true|false` (normalised from a bare `--wandb`)
        if argv[i] == "--wandb":
            value = argv[i + 1] if i + 1 < len(argv) else "true"
            i += 2
            if value.lower() in ("false", "0", "no"):
                return ["fit", *rest, *argv[i:]]
            continue
        rest.append(argv[i])
        i += 1
    project = "zoo"
    if "--wandb_project" in rest:
        i = rest.index("--wandb_project")
        project = rest[i + 1]
        del rest[i : i + 2]
    return ["fit", *wandb_logger_args(LOG_DIR, project), *rest]  # under --trainer.default_root_dir if given


def normalise_argv(argv: list[str]) -> list[str]:
    """Space-separated list values, bare switches and ``-k N`` (jsonargparse wants JSON lists,
    ``--switch true`` and ``--k``)."""
    if not argv:
        return argv
    lists = LIST_OPTIONS.get(argv[0], set())
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "-k":
            a = "--k"
        elif a.startswith("--") and "-" in a[2:]:  # --move-to == --move_to
            name, eq, value = a.partition("=")
            a = "--" + name[2:].replace("-", "_") + eq + value
        if a in SWITCHES and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out += [a, "true"]
            i += 1
            continue
        if a in lists:
            j = i + 1
            while j < len(argv) and not argv[j].startswith("-"):
                j += 1
            values = argv[i + 1 : j]
            if len(values) == 1 and values[0].lstrip().startswith("["):
                out += [a, values[0]]
            else:
                out += [a, _json.dumps(values)]
            i = j
            continue
        out.append(a)
        i += 1
    return out


def quiet_lightning() -> None:
    """Keep Lightning's useful lines (devices), drop its advertising and a known deprecation."""
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "Tip:" not in r.getMessage())
    warnings.filterwarnings("ignore", message=".*treespec.*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")  # the model's own is meant


def main(argv: Optional[list[str]] = None) -> int:
    argv = expand_fit_wandb(normalise_argv(list(sys.argv[1:] if argv is None else argv)))

    FULL_HELP["on"] = "--help_all" in argv
    argv = ["--help" if a == "--help_all" else a for a in argv]
    quiet_lightning()
    saved_argv, sys.argv = sys.argv, [saved_argv_name(), *argv]
    interrupted = []

    def on_sigint(signum, frame):  # remembered: Lightning turns an interrupt into SystemExit(1)
        interrupted.append(True)
        raise KeyboardInterrupt

    saved_handler = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        ZooCLI(
            ZooModel,
            ZooDataModule,
            trainer_class=ZooTrainer,
            parser_class=ZooArgumentParser,
            save_config_callback=FitConfigSaver,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            auto_configure_optimizers=False,
            parser_kwargs={"description": DESCRIPTION, "exit_on_error": False,
                           **{c: {"exit_on_error": False} for c in ZooCLI.subcommands()}},
        )
    except ZooError as e:
        print(f"zoo: error: {e}", file=sys.stderr)
        return 2
    except ArgumentError as e:  # a bad option or value, as one line
        message = " ".join(str(e).split())
        print(f"zoo: error: {message[:400]} (see `zoo {argv[0] if argv else ''} --help`)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        if interrupted:
            print("zoo: interrupted", file=sys.stderr)
            return 130
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except pickle.UnpicklingError:  # `fit --ckpt_path` read with weights_only (Lightning's loader)
        print("zoo: error: refusing to load the checkpoint: it holds Python objects beyond tensors and plain values "
              "(loading it could run code); only zoo/Lightning checkpoints are accepted", file=sys.stderr)
        return 2
    except OSError as e:  # a file system refusal that no check foresaw: one line, no traceback
        print(f"zoo: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    finally:
        sys.argv = saved_argv
        if saved_handler is not None:
            signal.signal(signal.SIGINT, saved_handler)
    return 0


def saved_argv_name() -> str:
    """The program's path when it is a script file (Lightning's multi-device launcher starts the
    other processes with it), else "zoo"."""
    import os

    name = sys.argv[0] if sys.argv else ""
    return name if os.path.isfile(name) and os.path.basename(name) == "zoo" else "zoo"


if __name__ == "__main__":
    sys.exit(main())
