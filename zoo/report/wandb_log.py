"""Weights & Biases as a comparison dashboard.

One benchmark = one W&B group: a run per architecture (its full config as run config, every
metric and cost figure as summary, so the runs table compares them column by column) and a
"comparison" run with the table, chart, grids, per-class table, class confusion and the
results files as an artifact. Offline by default, written under the benchmark's out folder;
``wandb sync OUT/wandb/offline-run-*`` uploads later.
"""
from __future__ import annotations

import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence

from zoo.model.module import model_config


def wandb_mode() -> str:
    """offline unless the user set W&B up (WANDB_MODE, or an API key to sync with)."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def safe_key(name: str) -> str:
    """A metric key W&B shows flat: "/" and "." would nest it in some views."""
    return re.sub(r"[/.\s]+", "_", str(name))


def flat_summary(row: dict) -> dict:
    """Numbers and short strings of a result row under sanitised keys."""
    out = {}
    for k, v in row.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[safe_key(k)] = v
    return out


def new_group(kind: str = "benchmark") -> str:
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def architecture_config(arch, row: dict) -> dict:
    """What identifies an architecture: its --model.* settings plus what they resolve to."""
    model = arch.model
    cfg = {k: v for k, v in model_config(model.hparams).items()}
    return {
        **cfg,
        "name": arch.name,
        "architecture": model.architecture,
        "weights_id": row.get("weights", model.weights_id),
        "checkpoint": getattr(model, "checkpoint_path", None),
        "input_size": list(model.data_config.get("input_size", ())),
        "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in model.data_config.items()},
        "dim": row.get("dim", model.embedding_dim),
        "params_m": row.get("params_m"),
    }


def log_benchmark(meta: dict, rows: Sequence[dict], results: Sequence[dict], archs: Sequence, out: Path,
                  project: str, chart: Optional[Path] = None, images: Optional[dict[str, Path]] = None,
                  kind: str = "benchmark") -> str:
    """Log one group (a run per architecture + a comparison run); returns the group name."""
    import wandb

    mode = wandb_mode()
    out = Path(out)
    group = new_group(kind)
    settings = wandb.Settings(silent=True, console="off")
    common = {"project": project, "dir": str(out), "mode": mode, "group": group, "settings": settings}
    for arch, row in zip(archs, rows):
        run = wandb.init(name=arch.name, job_type="architecture",
                         config={**architecture_config(arch, row), "benchmark": meta}, **common)
        run.summary.update(flat_summary(row))
        run.finish()

    run = wandb.init(name=f"comparison ({len(rows)} architectures)", job_type="comparison",
                     config={**meta, "architectures": [architecture_config(a, r) for a, r in zip(archs, rows)]},
                     **common)
    columns = [c for c in rows[0] if all(isinstance(r.get(c), (int, float, str, bool, type(None))) for r in rows)]
    logs: dict[str, Any] = {"comparison_table": wandb.Table(columns=[safe_key(c) for c in columns],
                                                           data=[[r.get(c) for c in columns] for r in rows])}
    if chart:
        logs["comparison_chart"] = wandb.Image(str(chart))
    for name, path in (images or {}).items():
        logs[safe_key(name)] = wandb.Image(str(path))
    per_class, confusion = [], []
    for r in results:
        name = r["row"]["architecture"]
        for cls, m in r["details"].get("per_class", {}).items():
            per_class.append([name, cls, m.get("queries"), m.get("hit@1"), m.get("hit@10"), m.get("p@10"), m.get("ap")])
        conf = r["details"].get("confusion")
        if conf:
            for c, line in zip(conf["classes"], conf["matrix"]):
                confusion += [[name, c, c2, v] for c2, v in zip(conf["classes"], line)]
    if per_class:
        logs["per_class"] = wandb.Table(columns=["architecture", "class", "queries", "hit@1", "hit@10", "p@10", "ap"],
                                        data=per_class)
    if confusion:
        logs["class_confusion"] = wandb.Table(columns=["architecture", "query_class", "result_class", "share"],
                                              data=confusion)
    run.log(logs)
    for row in rows:  # also as summary, one key per architecture and metric
        for k, v in flat_summary(row).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                run.summary[f"{safe_key(row['architecture'])}__{k}"] = v
    artifact = wandb.Artifact(safe_key(group), type=kind, description=meta.get("description", ""))
    for name in ("results.json", "results.csv", "report.md"):
        if (out / name).is_file():
            artifact.add_file(str(out / name), name=name)
    run.log_artifact(artifact)
    run.finish()
    where = ("synced" if mode == "online"
             else f"offline in {out}/wandb (upload later with `wandb sync {out}/wandb/offline-run-*`)")
    print(f"zoo: W&B group {group}: {len(rows)} architecture run(s) + comparison run, {where}", file=sys.stderr)
    return group


# ---- training -------------------------------------------------------------------------------
def wandb_logger_args(save_dir: str, project: str = "zoo") -> list[str]:
    """`zoo fit --wandb`: Lightning's WandbLogger, the best checkpoint logged as an artifact."""
    return ["--trainer.logger", "lightning.pytorch.loggers.WandbLogger", "--trainer.logger.log_model", "true",
            "--trainer.logger.project", project, "--trainer.logger.save_dir", save_dir,
            "--trainer.logger.name", "null"]  # not CSVLogger's "lightning_logs", carried over by the parser


def prepare_fit_logger(trainer, model, config: Optional[dict] = None) -> None:
    """Before training: a WandbLogger runs offline by default, is named after the
    architecture, and records the trainer and data settings in its config."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if not isinstance(logger, WandbLogger):
            continue
        if logger._experiment is not None:
            continue
        init = logger._wandb_init  # read by WandbLogger.experiment, which is created lazily
        for key in [k for k, v in init.items() if v is None]:  # unset: wandb's own defaults
            del init[key]
        init.setdefault("mode", wandb_mode())
        init.setdefault("name", model.architecture)
        init.setdefault("job_type", "fit")
        if config:
            logger.log_hyperparams(config)


def finish_fit_logger(trainer) -> None:
    """After training: close the W&B run, so the checkpoint artifacts are written now."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger._experiment.finish()
            mode = logger._wandb_init.get("mode")
            if mode == "offline":
                print(f"zoo: W&B run offline in {logger.save_dir}/wandb; upload with `wandb sync {logger.save_dir}/wandb/offline-run-*`",
                      file=sys.stderr)
