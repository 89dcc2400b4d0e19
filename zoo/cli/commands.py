"""zoo's commands as methods of Lightning's Trainer, so that every batch model run (embedding,
benchmark, training) goes through it and devices, precision and multi-device runs come from
``--trainer.*``. Each method resolves the model and calls one function of the package that
owns the work; options several commands share are declared once (zoo.cli.options).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import lightning as L

from zoo.cli.options import LOADER_OPTIONS, MODEL_OPTIONS, command
from zoo.dedup.compare import run_compare
from zoo.dedup.duplicates import run_duplicates
from zoo.dedup.keep import DEFAULT_RULES
from zoo.dedup.quarantine import undo_quarantine
from zoo.errors import ZooError
from zoo.evaluate.benchmark import Architecture, run_benchmark
from zoo.evaluate.calibration import auto_threshold, run_calibrate
from zoo.evaluate.check import run_check
from zoo.evaluate.video_benchmark import run_video_benchmark
from zoo.index.command import run_index, run_search
from zoo.model.listing import list_registered
from zoo.model.module import ZooModel, model_config
from zoo.model.restore import load_model
from zoo.model.soup import make_soup


def resolve_model(model: ZooModel, backbone: Optional[str] = None, checkpoint: Optional[str] = None) -> ZooModel:
    """The model a command embeds with: a trained checkpoint, the --model.* config, or that
    config with another backbone (``--backbone`` shortcut)."""
    if checkpoint:
        return load_model(checkpoint)
    if backbone and backbone != model.hparams.backbone:
        return ZooModel(**{**model_config(model.hparams), "backbone": backbone})
    return model


class ZooTrainer(L.Trainer):
    """Lightning's Trainer plus zoo's commands."""

    zoo_runtime = None  # the --runtime of the command running (zoo.model.runtime); None: torch

    @command(*MODEL_OPTIONS, "overwrite", *LOADER_OPTIONS, "runtime")
    def index(self, model: ZooModel, images: Optional[str] = None, out: str = "zoo.index", factory: str = "auto",
              update: bool = False, video: Optional[str] = None, every: int = 1, decode: str = "auto",
              shard_size: int = 4096, channels_last: Optional[bool] = None, hubness: int = 0,
              backbone=None, checkpoint=None, runtime="auto", **options) -> None:
        """Embed a folder of images (or a video's frames) into a persistent FAISS index.

        Embeddings stream to shards inside --out as they are made, so memory does not grow with
        the number of images and a stopped run, started again with the same command, resumes
        from its last complete shard. With --trainer.devices N (and --trainer.num_nodes, with
        --out on a shared file system) every process embeds its part.

        Args:
            images: folder of images (recursive; class = parent folder name).
            out: index folder to write.
            factory: FAISS index_factory string (Flat = exact, HNSW32, IVF1024,SQ8, ...) or auto
                (Flat below 50k images, else IVF by memory).
            update: bring the index up to date with its folder (new, changed, removed files).
            video: index this video's frames instead of a folder.
            every: with --video, keep every N-th frame.
            decode: where JPEGs decode: auto (the GPU under CUDA), cpu or device.
            shard_size: embeddings per shard written to disk (the most a crash can lose).
            channels_last: channels-last layout (default: on CUDA, with CPU bf16).
            hubness: K > 0: rank by cosine minus half the item's mean cosine to its K nearest
                (hubness reduction, CSLS; 10 is usual); 0: off.
        """
        self.zoo_runtime = runtime
        run_index(resolve_model(model, backbone, checkpoint), images, out, video=video, every=every, update=update,
                  factory=factory, decode=decode, shard_size=shard_size, channels_last=channels_last, trainer=self,
                  hubness=hubness, **options)

    @command(*MODEL_OPTIONS, "overwrite", "runtime")
    def search(self, model: ZooModel, query: list[str], index: str = "zoo.index", k: int = 10, json: bool = False,
               grid: Optional[str] = None, nprobe: Optional[int] = None, ef_search: Optional[int] = None,
               backbone=None, checkpoint=None, overwrite=False, runtime="auto") -> None:
        """Rank the indexed images by cosine similarity to each query image.

        Queries are embedded with the index's own model unless --backbone or --checkpoint names
        another (it must make vectors of the same kind).

        Args:
            query: query image file(s).
            index: index folder made by `zoo index`.
            k: number of results.
            json: print JSON instead of a table.
            grid: save a PNG of each query and its top k.
            nprobe: IVF indexes: inverted lists to visit (default: the index's own, ~0.95 recall@10).
            ef_search: HNSW indexes: search breadth (default: the index's own).
        """
        self.zoo_runtime = runtime
        own = resolve_model(model, backbone, checkpoint) if (backbone or checkpoint) else None
        run_search(index, query, own, k=k, as_json=json, grid=grid, overwrite=overwrite, nprobe=nprobe,
                   ef_search=ef_search, trainer=self)

    @command(*MODEL_OPTIONS, "overwrite", *LOADER_OPTIONS, "runtime")
    def compare(self, model: ZooModel, images: list[str], matrix: Optional[str] = None, backbone=None,
                checkpoint=None, runtime="auto", **options) -> None:
        """Similarity in [0, 1] of each pair of images (1 = same content).

        Args:
            images: two or more image files, or a folder.
            matrix: write the all-versus-all cosine distance matrix to MATRIX.csv and MATRIX.npy.
        """
        self.zoo_runtime = runtime
        run_compare(resolve_model(model, backbone, checkpoint), images, matrix=matrix, trainer=self, **options)

    @command(*MODEL_OPTIONS, "calibration", "overwrite", "protect", "keep_rules", *LOADER_OPTIONS, "runtime")
    def duplicates(self, model: ZooModel, images: Optional[str] = None, index: Optional[str] = None,
                   threshold: Union[float, Literal["auto"]] = 0.95, background: Optional[str] = None,
                   background_k: int = 10, out: str = "duplicates", exact_only: bool = False, plots: bool = False,
                   move_to: Optional[str] = None, undo: Optional[str] = None, exact: bool = False,
                   approximate: bool = False, nprobe: Optional[int] = None, grouping: str = "star",
                   review: bool = False, port: int = 8000, token: Optional[str] = None, backbone=None,
                   checkpoint=None, calibration="zoo-calibration.json", precision: Optional[float] = None,
                   protect=None, keep_rules=None, runtime="auto",
                   **options) -> None:
        """Find exact and near-duplicate groups in a folder or an index.

        Args:
            images: folder to scan (exact duplicates by hash first, then near duplicates).
            index: an existing index to search for near duplicates (no model run).
            threshold: cosine similarity at or above which two images are near duplicates, or auto:
                the threshold reaching the calibrated precision at this library's size, from the
                model's `zoo calibrate` (read from --calibration); expected precision goes to stderr
                and groups.json.
            precision: with --threshold auto, the precision to reach (default: the calibrated one).
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
            review: then serve the review page on this machine (prints its address; Ctrl-C stops):
                see each group, choose what to keep, move the rest to --move-to (default
                OUT/quarantine) and undo; with --images the vectors are also saved as OUT/index.
            port: --review: the page's port (0: any free one).
            token: --review: the token moves need (default: env ZOO_TOKEN, else one printed at start-up).
        """
        if undo:
            return undo_quarantine(undo)
        if exact and approximate:
            raise ZooError("--exact and --approximate exclude each other")
        self.zoo_runtime = runtime
        model = resolve_model(model, backbone, checkpoint)
        auto = None
        if threshold == "auto":
            threshold, auto = auto_threshold(calibration, model if index is None else None, index, precision)
        elif precision is not None:
            raise ZooError("--precision goes with --threshold auto")
        rules = tuple(keep_rules or DEFAULT_RULES)
        run_duplicates(model, images=images, index=index, threshold=threshold, out=out, background=background, auto=auto,
                       background_k=background_k, exact_only=exact_only, plots=plots, move_to=move_to, trainer=self,
                       search="exact" if exact else "ivf" if approximate else "auto", nprobe=nprobe,
                       grouping=grouping, keep_rules=rules, protect=protect or (), review=review, **options)
        if review:
            from zoo.serve.server import run_server  # fastapi and uvicorn, only for serving

            run_server(index or str(Path(out) / "index"), port=port, token=token, duplicates=out,
                       move_to=move_to or str(Path(out) / "quarantine"), keep_rules=rules, protect=protect or (),
                       precision=str(self.precision), page="#review", calibration=calibration, runtime=runtime)

    @command(*MODEL_OPTIONS, "calibration", "overwrite", *LOADER_OPTIONS)
    def calibrate(self, model: ZooModel, images: str, sample: int = 200, precision: float = 0.95, copies: int = 1,
                  edits: Union[str, list[dict[str, Any]]] = "copyset", plot: Optional[str] = None, seed: int = 0,
                  library_size: Optional[int] = None, library_copy_pairs: Optional[int] = None,
                  backbone=None, checkpoint=None, **options) -> None:
        """Find the model's copy-detection threshold for a target precision on your own photos.

        The threshold is merged into --calibration, keyed by the model's identity.

        Args:
            images: a folder of your photos; a seeded sample gets synthetic edited copies.
            sample: how many photos to sample.
            precision: the pair precision the threshold must reach (the recall there is reported).
            copies: edited copies per photo.
            edits: the copy edits: a preset of zoo.data.augment (copyset, copydetect) or a list of {name, args, p}.
            plot: precision/recall curve PNG (default: beside the calibration file).
            seed: seed of the sample and of the edits.
            library_size: photos of the library the threshold is for: says how many photos the
                sample needs (default: the folder's count).
            library_copy_pairs: copy pairs expected in that library (default: one per ten photos).
        """
        run_calibrate(resolve_model(model, backbone, checkpoint), images, sample=sample, precision=precision,
                      edits=edits, copies=copies, plot=plot, seed=seed, trainer=self, library_size=library_size,
                      library_copy_pairs=library_copy_pairs, **options)

    @command(*MODEL_OPTIONS, "calibration", *LOADER_OPTIONS)
    def check(self, model: ZooModel, query: list[str], index: Optional[str] = None, images: Optional[str] = None,
              json: bool = False, calibration="zoo-calibration.json", backbone=None, checkpoint=None,
              **options) -> None:
        """Is each query image a copy of a known one (e.g. a placeholder) or new?

        Answers "copy of ITEM" or "new" with the cosine of the nearest known image, the threshold
        for this many known images from the model's `zoo calibrate` (read from --calibration) and
        the expected precision of a copy verdict there; how it was estimated goes to stderr. A
        model without a calibration is an error (exit 2).

        Args:
            query: query image file(s) or folders.
            index: index folder of the known images, made by `zoo index` (default: zoo.index),
                searched with its own model.
            images: instead of --index: a folder of known images, embedded now with the
                --model.* config (or --backbone / --checkpoint).
            json: print JSON instead of a line per query.
        """
        run_check(index, query, calibration=calibration, as_json=json, trainer=self, images=images,
                  model=resolve_model(model, backbone, checkpoint) if images is not None else None, **options)

    @command("overwrite", *LOADER_OPTIONS)
    def benchmark(self, model: ZooModel, backbone: Optional[list[str]] = None, head: Optional[list[str]] = None,
                  checkpoint: Optional[list[str]] = None, architectures: Optional[list[dict[str, Any]]] = None,
                  images: Optional[str] = None, query: Optional[str] = None, gallery: Optional[str] = None,
                  protocol: str = "auto", query_fraction: float = 0.2, seed: int = 0, k: int = 10,
                  out: str = "benchmark-results", samples: int = 3, wandb: bool = False, wandb_project: str = "zoo",
                  video: Optional[str] = None, window: int = 5, make_examples: int = 0, twin_threshold: float = 0.9,
                  hubness: int = 0, **options) -> None:
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
            seed: seed of the split (and of the video examples).
            k: depth of the top-k confusion and of the sample grids.
            out: output folder (results.csv, results.json, report.md, PNG charts and grids).
            samples: sample queries (and worst queries) per architecture shown in the top-k grids.
            wandb: also log to Weights & Biases: one run per architecture in a group, plus a
                comparison run (offline under --out unless W&B is set up).
            wandb_project: the W&B project of --wandb.
            video: video protocol: search every frame of this video with the --query examples.
            window: video protocol: a result within +-window frames of the true frame counts.
            make_examples: video protocol: first write N examples (evenly spaced frames, cropped,
                brightness changed, JPEG) and their truth.csv into --query.
            twin_threshold: cosine at which two images of the set count as near-identical twins.
            hubness: rank as an index built with --hubness K does (hubness reduction; 0: plain cosine).
        """
        archs = Architecture.from_cli(model, backbone, head, checkpoint, architectures)
        common = dict(query=query, k=k, out=out, samples=samples, use_wandb=wandb, wandb_project=wandb_project,
                      seed=seed, trainer=self, **options)
        if video is not None:
            return run_video_benchmark(archs, video=video, window=window, make=make_examples, images=images,
                                       gallery=gallery, **common)
        run_benchmark(archs, images=images, gallery=gallery, protocol=protocol, query_fraction=query_fraction,
                      twin_threshold=twin_threshold, hubness=hubness, **common)

    @command(*MODEL_OPTIONS, "overwrite")
    def export(self, model: ZooModel, format: str = "onnx", out: Optional[str] = None, opset: int = 17,
               backbone=None, checkpoint=None, overwrite=False) -> None:
        """Export the embedding model (preprocessed batch -> L2-normalised embedding) to ONNX or TorchScript.

        Args:
            format: onnx or torchscript.
            out: the model file to write (default: the checkpoint's or architecture's name + .onnx/.pt);
                its preprocessing and identity go to OUT.json.
            opset: ONNX opset version.
        """
        from zoo.model.export import export_model  # onnx, only for exports

        export_model(resolve_model(model, backbone, checkpoint), format=format, out=out, overwrite=overwrite,
                     opset=opset)

    @command("protect", "keep_rules", "calibration", "runtime")
    def serve(self, model: ZooModel, index: str = "zoo.index", host: str = "127.0.0.1", port: int = 8000,
              token: Optional[str] = None, duplicates: Optional[str] = None, max_upload_mb: float = 20.0,
              threads: int = 1, allowed_hosts: Optional[list[str]] = None, max_pixels: int = 40_000_000,
              read_only: bool = False, move_to: Optional[str] = None, protect=None, keep_rules=None,
              calibration="zoo-calibration.json", runtime="auto") -> None:
        """Serve searches over HTTP: a JSON API (docs at /docs) and a web page; the index's model loads once.

        Args:
            index: index folder made by `zoo index`.
            host: address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
            port: TCP port (0: any free port; the address is printed on stderr).
            token: require `Authorization: Bearer TOKEN` on the API (default: env ZOO_TOKEN); moves
                and undos need a token even without it (one is printed at start-up).
            duplicates: a `zoo duplicates` result (DIR or DIR/groups.json) to review (the page's Review tab).
            read_only: refuse every write (moving, undoing) with 403.
            move_to: the review page's quarantine folder (default: DIR/quarantine beside groups.json).
            max_upload_mb: largest image upload accepted, in MiB.
            threads: CPU threads of a forward pass (requests take turns on the one model).
            allowed_hosts: more names the server may be reached by (the Host header), e.g. [photos.lan];
                without them only its own addresses and, on loopback, localhost are answered.
            max_pixels: largest image an upload may decode to (a JPEG after its draft reduction); larger ones get 413.
        """
        from zoo.serve.server import run_server  # fastapi and uvicorn, only for serving

        run_server(index, host=host, port=port, token=token, duplicates=duplicates, max_upload_mb=max_upload_mb,
                   threads=threads, allowed_hosts=allowed_hosts or (), max_pixels=max_pixels,
                   precision=str(self.precision), read_only=read_only, move_to=move_to,
                   keep_rules=tuple(keep_rules or DEFAULT_RULES), protect=protect or (),
                   page="#review" if duplicates else "",  # precision: the index's own by default
                   calibration=calibration, runtime=runtime)

    @command("overwrite")
    def soup(self, model: ZooModel = None, checkpoints: Optional[list[str]] = None, out: str = "soup.ckpt",
             overwrite=False) -> None:
        """Average checkpoints fine-tuned from one start into one checkpoint (a model soup).

        The result behaves like an ensemble of the runs at one model's cost; every command loads
        it with --checkpoint.

        Args:
            checkpoints: two or more checkpoints fine-tuned from the same start (e.g. two configs or seeds).
            out: the checkpoint to write.
        """
        make_soup(checkpoints or [], out, overwrite=overwrite)

    @command()
    def list_registered(self, model: ZooModel = None, pattern: str = "*", timm: bool = False) -> None:
        """List registered backbones and heads (wildcards allowed, e.g. 'res*') and which weights are offline.

        Args:
            pattern: shell-style wildcard on names.
            timm: also list matching timm model names (any of them works as --model.backbone).
        """
        list_registered(pattern, timm, weights=model.hparams.weights if model is not None else None)


ZooTrainer.list = ZooTrainer.list_registered  # `zoo list`
COMMANDS = ("index", "search", "compare", "duplicates", "calibrate", "check", "benchmark", "export", "soup", "serve",
            "list")
