"""Training data: a labelled folder split into train / held-out, P x K balanced batches.

Held-out images of each class are split again into queries and gallery, for retrieval
validation. Without labels, each training image comes with an augmented copy as its positive
(its own "class" of two), and the other images of the batch are its negatives.
"""
from __future__ import annotations

import random
from collections import defaultdict
from functools import partial
from typing import Any, Optional, Union

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.data.augment import Spec, build_augmentation, resolve_spec, timm_augmentation
from zoo.data.defaults import BATCH_SIZE, NUM_WORKERS
from zoo.data.images import ImageDataset, Record, collate, scan_folder
from zoo.errors import ZooError


def augmentation(data_config: dict, spec: Spec | None = "default"):
    """The positive-making augmentations (see zoo.augment: a preset name or a list of steps)."""
    return build_augmentation(spec, data_config)


class LabelledImages(ImageDataset):
    """records with class ids -> {"image", "label", "is_query", "index"}."""

    def __init__(self, records: list[Record], labels: list[int], transform, is_query: Optional[list[bool]] = None):
        super().__init__(records, transform)
        self.labels, self.is_query = labels, is_query

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        if "error" not in item:
            item["label"] = self.labels[i]
            if self.is_query is not None:
                item["is_query"] = self.is_query[i]
        return item


class TwoViews:
    """A transform that returns two independent augmentations of one image: (2, 3, H, W)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image) -> torch.Tensor:
        return torch.stack([self.transform(image), self.transform(image)])


class AugmentedPairs(ImageDataset):
    """Unlabelled records -> two augmented views of one image, labelled with its index."""

    def __init__(self, records: list[Record], transform):
        super().__init__(records, TwoViews(transform))

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        if "error" not in item:
            item["index"] = item["label"] = torch.tensor([i, i])
        return item


class AugmentedQueries(Dataset):
    """Unlabelled validation: each held-out image (gallery) and a seeded edited copy (query).

    Items alternate: 2j is image j, 2j+1 its copy, so that every batch holds whole pairs (a
    loss sees positives). The "class" of both is j: hit@1 says how often a copy finds its
    own original first, and the pair metrics count (image, copy) as the positive pairs.
    """

    def __init__(self, records: list[Record], eval_transform, augment, seed: int = 0):
        self.originals = ImageDataset(records, eval_transform)
        self.copies = ImageDataset(records, augment)
        self.seed = seed

    def __len__(self) -> int:
        return 2 * len(self.originals)

    def __getitem__(self, i: int) -> dict:
        j, is_copy = divmod(i, 2)
        if not is_copy:
            item = self.originals[j]
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1_000_003 + i)  # the same copy every epoch
                state = random.getstate()
                random.seed(self.seed * 1_000_003 + i)
                try:
                    item = self.copies[j]
                finally:
                    random.setstate(state)
        if "error" not in item:
            item.update(index=i, label=j, is_query=bool(is_copy))
        return item


class ZooDataModule(L.LightningDataModule):
    def __init__(
        self,
        root: Optional[str] = None,
        val_fraction: float = 0.2,
        batch_size: int = BATCH_SIZE,
        samples_per_class: int = 4,
        num_workers: int = NUM_WORKERS,
        use_labels: bool = True,
        augmentations: Union[str, list[dict[str, Any]]] = "default",
        val_augmentations: Union[str, list[dict[str, Any]]] = "copyset",
        seed: int = 0,
        auto_augment: Optional[str] = None,
        crop_scale: tuple[float, float] = (0.35, 1.0),
        train_size: Optional[int] = None,
    ):
        """
        Args:
            root: image folder; the class is the parent folder's name.
            val_fraction: share of each class held out for validation (queries + gallery).
            batch_size: images per batch = classes per batch x samples_per_class.
            samples_per_class: K of the P x K sampler (images of one class in a batch).
            use_labels: False trains with augmentation positives even if folders name classes.
            augmentations: the edits that make a training positive without labels: a preset
                (default, copydetect, copyset) or a list of {name, args, p} steps, each a
                torchvision.transforms.v2 class (see zoo/augment.py).
            val_augmentations: the fixed, seeded edits of the unlabelled validation copies;
                keep them different from the training ones so validation measures generalisation.
            auto_augment: labelled training: timm's training transform instead of --data.augmentations,
                with this policy (rand-m9-mstd0.5-inc1: RandAugment; original: AutoAugment; augmix-m5-w4-d2).
            crop_scale: with auto_augment, the random crop's share of the area [low, high].
            train_size: training images are made at this side (pixels) instead of the model's
                input size, which stays the size validation and embedding use. Train smaller
                than you embed (FixRes, Touvron et al. 2019): a random crop enlarges what it
                keeps, so objects look bigger in training than in a whole photo at the same size;
                embedding at train_size times the crops' mean enlargement E[1/sqrt(share of the
                area)] shows them at the trained size (crop_scale [0.35, 1]: 1.26, 224 -> 282).
        """
        super().__init__()
        self.save_hyperparameters()
        if samples_per_class < 2:
            raise ZooError(f"samples_per_class={samples_per_class}: a class needs at least 2 images per batch to give a positive")
        if batch_size % samples_per_class or batch_size // samples_per_class < 2:
            raise ZooError(
                f"batch_size={batch_size} does not fit the sampler: it must be a multiple of samples_per_class="
                f"{samples_per_class} holding at least 2 classes (e.g. --data.batch_size {2 * samples_per_class} or more)"
            )
        resolve_spec(augmentations), resolve_spec(val_augmentations)  # a bad name fails now
        if train_size is not None and not 16 <= train_size <= 1024:
            raise ZooError(f"train_size={train_size}: the training side must be between 16 and 1024 pixels")
        if auto_augment is not None:  # so does a bad policy
            timm_augmentation({"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}, auto_augment, crop_scale)
        self.train_records: list[Record] = []
        self.val_records: list[Record] = []

    def split(self) -> None:
        hp = self.hparams
        if hp.root is None:
            raise ZooError("no training data: pass --data.root DIR")
        records = scan_folder(hp.root)
        by_class: dict[Optional[str], list[Record]] = defaultdict(list)
        for r in records:
            by_class[r.label if hp.use_labels else None].append(r)
        self.labelled = None not in by_class and len(by_class) >= 2
        self.classes = sorted(by_class) if self.labelled else []
        rng = random.Random(hp.seed)
        train, val, is_query = [], [], []
        for name in sorted(by_class, key=str):
            items = by_class[name][:]
            rng.shuffle(items)
            n_val = int(round(len(items) * hp.val_fraction)) if len(items) > 2 else 0
            val_part = items[:n_val]
            train += items[n_val:]
            val += val_part
            is_query += [i < (n_val + 1) // 2 for i in range(n_val)]  # half queries, half gallery
        self.train_records, self.val_records, self.val_is_query = train, val, is_query
        if self.labelled:
            per_class = defaultdict(int)
            for r in train:
                per_class[r.label] += 1
            usable = sum(1 for n in per_class.values() if n >= hp.samples_per_class)
            P = hp.batch_size // hp.samples_per_class
            if usable < P:
                raise ZooError(
                    f"the sampler needs {P} classes with >= {hp.samples_per_class} training images each per batch "
                    f"(batch_size={hp.batch_size}); {hp.root} has {usable}: lower --data.batch_size"
                )

    def setup(self, stage: str) -> None:
        if not self.train_records:
            self.split()
        model = self.trainer.lightning_module
        model.build()
        cfg = model.data_config
        import timm

        eval_tf = timm.data.create_transform(**cfg, is_training=False)
        train_cfg = dict(cfg)
        if self.hparams.train_size is not None:
            train_cfg["input_size"] = (cfg["input_size"][0], self.hparams.train_size, self.hparams.train_size)
        if self.hparams.auto_augment is not None:
            if not self.labelled:
                raise ZooError("--data.auto_augment is for labelled training; unlabelled training makes its positives "
                               "with --data.augmentations")
            train_tf = timm_augmentation(train_cfg, self.hparams.auto_augment, self.hparams.crop_scale)
        else:
            train_tf = augmentation(train_cfg, self.hparams.augmentations)
        ids = {c: i for i, c in enumerate(self.classes)}
        if self.labelled:
            self.train_set = LabelledImages(self.train_records, [ids[r.label] for r in self.train_records], train_tf)
        else:
            self.train_set = AugmentedPairs(self.train_records, train_tf)
        if not self.val_records:
            self.val_set = None
        elif self.labelled:
            self.val_set = LabelledImages(self.val_records, [ids[r.label] for r in self.val_records], eval_tf, self.val_is_query)
        else:
            val_tf = augmentation(cfg, self.hparams.val_augmentations)
            self.val_set = AugmentedQueries(self.val_records, eval_tf, val_tf, seed=self.hparams.seed)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        common = dict(num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0)
        if self.labelled:
            from pytorch_metric_learning.samplers import (
                MPerClassSampler,  # training only: slow import (scipy)
            )

            sampler = MPerClassSampler(self.train_set.labels, m=hp.samples_per_class, batch_size=hp.batch_size,
                                       length_before_new_iter=len(self.train_set))
            return DataLoader(self.train_set, batch_size=hp.batch_size, sampler=sampler, collate_fn=collate, drop_last=True, **common)
        return DataLoader(self.train_set, batch_size=hp.batch_size // 2, shuffle=True, drop_last=True,
                          collate_fn=partial(collate, pairs=True), **common)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, collate_fn=collate,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)
