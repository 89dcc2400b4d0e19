"""Where embedding time goes on this machine, per backbone and per inference path.

    python benchmarks/embed_throughput.py [--backbones resnet50 mobilenetv2_100 vgg16] [--images 200]
        [--phone 40] [--screens 40] [--agree 96] [--seconds 8] [--photos DIR] [--rss 10000 100000]

Paths (benchmarks/embed_paths.py): torch fp32 (the old CPU default), fp32 + channels_last,
bf16 autocast + channels_last, ONNX Runtime fp32, OpenVINO fp32 and bf16 (the runtimes that are
installed). For each backbone and path it prints images per second of
  forward        the bare model forward on random tensors (batch --batch-size)
  index JPEG     `zoo index` end to end on photo-sized JPEGs (500 x 375, random crops of food7)
  index phone    the same on phone-sized JPEGs (4032 x 3024, food7 upscaled; --phone, first backbone)
  index PNG      the same on PNG screenshots (1920 x 1080; --screens, first backbone)
with the ratio of each to the bare fp32 forward, and the path's agreement with torch fp32 on
--agree food7 photos, a sixth of them edited copies (the shared pretrained MobileNetV2,
random-init others): min and mean
per-image cosine, top-10 neighbour overlap, and whether the duplicate pairs at 0.95 are the same.
"ok" marks a path that keeps cosine >= 0.999, overlap >= 0.99 and the same pairs.

A data-path table (loader alone, CPU and device decode) follows for the first backbone; --rss N...
adds the peak resident memory of `zoo index` of N images in a child process.
Weights are random except the shared MobileNetV2 (speed does not depend on them). Run it under
`flock /work/cpu.lock` on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import zoo
from zoo.data.images import scan_folder
from zoo.embed.runner import default_trainer, make_loader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo.model.runtime import forget_compiled  # noqa: E402
from embed_paths import PATHS, agreement, available, forward_rate, index_rate, meets_bar, vectors  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def make_photos(folder: Path, n: int, seed: int = 0) -> Path:
    """n photo-sized JPEGs (500 x 375, quality 90): random crops of real photos if available."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((SHARED / "data" / "food7").rglob("*.jp*g")) if (SHARED / "data" / "food7").is_dir() else []
    rng = random.Random(seed)
    for i in range(n):
        p = folder / f"{i:06d}.jpg"
        if p.exists():
            continue
        if sources:
            with Image.open(rng.choice(sources)) as im:
                im = im.convert("RGB")
                scale = max(500 / im.width, 375 / im.height) * rng.uniform(1.0, 1.3)
                im = im.resize((int(im.width * scale) + 1, int(im.height * scale) + 1), Image.BICUBIC)
                x, y = rng.randint(0, im.width - 500), rng.randint(0, im.height - 375)
                im = im.crop((x, y, x + 500, y + 375))
        else:
            small = np.random.default_rng(seed * 100003 + i).integers(0, 256, (6, 8, 3), dtype=np.uint8)
            im = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        im.save(p, quality=90)
    return folder


def rate(fn, seconds: float, per_call: int) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        fn()
        n += per_call
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def data_path_rate(model, records, batch_size: int, num_workers: int, decode: str, device: torch.device) -> float:
    """Images per second through the loader (and, for device decode, the device's decode)."""
    trainer = default_trainer(False)
    loader, mode = make_loader(model, records, trainer, batch_size, num_workers, decode)
    model = model.to(device)
    n, t = 0, time.perf_counter()
    for batch in loader:
        batch = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        batch = model.on_after_batch_transfer(batch, 0)  # normalise (and decode) on the device
        n += len(batch["index"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def rss_child(folder: str, out: str, backbone: str, size: int) -> None:
    """Index ``folder`` and print peak RSS (MiB); run in its own process."""
    model = zoo.ZooModel(backbone, pretrained=False, data_config={"image_size": size})
    zoo.build_index(folder, model, out=out, trainer=default_trainer(False), batch_size=64, num_workers=2)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def rss_rows(photos: Path, sizes: list[int], backbone: str, size: int):
    """Yield a table row per size."""
    files = sorted(photos.glob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            folder = Path(tmp) / f"n{n}"
            for i in range(n):  # hard links: n index entries, no extra disk
                sub = folder / f"{i // 1000:04d}"
                sub.mkdir(parents=True, exist_ok=True)
                os.link(files[i % len(files)], sub / f"{i:07d}.jpg")
            out = Path(tmp) / f"n{n}.index"
            t = time.perf_counter()
            child = subprocess.run([sys.executable, __file__, "--rss-child", str(folder), str(out), backbone, str(size)],
                                   capture_output=True, text=True)
            if child.returncode:
                sys.exit(child.stderr[-2000:])
            peak = float(child.stdout.strip().splitlines()[-1])
            disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
            yield f"| {n:>9,} | {peak:>10.0f} | {disk:>12.1f} | {n / (time.perf_counter() - t):>7.0f} |"
            import shutil

            shutil.rmtree(folder)
            shutil.rmtree(out)


def make_phone_photos(folder: Path, n: int, seed: int = 1) -> Path:
    """n phone-sized JPEGs (4032 x 3024, quality 90): food7 photos upscaled (smooth pictures without it)."""
    folder.mkdir(parents=True, exist_ok=True)
    small = make_photos(folder.parent / "phone-sources", n, seed)
    for i, src in enumerate(sorted(small.glob("*.jpg"))[:n]):
        p = folder / f"{i:06d}.jpg"
        if not p.exists():
            with Image.open(src) as im:
                im.convert("RGB").resize((4032, 3024), Image.BICUBIC).save(p, quality=90)
    return folder


def make_screens(folder: Path, n: int, seed: int = 2) -> Path:
    """n PNG screenshots (1920 x 1080): flat window chrome, lines of text and a photo in a window."""
    from PIL import ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    small = make_photos(folder.parent / "screen-sources", n, seed)
    rng = random.Random(seed)
    for i, src in enumerate(sorted(small.glob("*.jpg"))[:n]):
        p = folder / f"{i:06d}.png"
        if p.exists():
            continue
        im = Image.new("RGB", (1920, 1080), tuple(rng.randint(200, 250) for _ in range(3)))
        d = ImageDraw.Draw(im)
        d.rectangle((0, 0, 1920, 40), fill=(40, 40, 48))
        d.rectangle((0, 40, 300, 1080), fill=(230, 232, 236))
        for y in range(80, 1040, 28):
            d.text((20, y), f"item {rng.randint(0, 10**6)}", fill=(30, 30, 30))
            d.text((1100, y), " ".join(f"word{rng.randint(0, 99)}" for _ in range(8)), fill=(20, 20, 60))
        with Image.open(src) as photo:
            im.paste(photo.convert("RGB").resize((750, 562)), (330, 80 + rng.randint(0, 300)))
        im.save(p)
    return folder


def agreement_records(n: int, folder: Path):
    """n pictures: food7 photos spread over its classes and, for a sixth of n, edited copies of
    some of them (JPEG quality 75, half also scaled to 90%) written to ``folder``, so that there
    are duplicate pairs about the 0.95 threshold (none without ../shared)."""
    food7 = SHARED / "data" / "food7"
    if n <= 0 or not food7.is_dir():
        return []
    copies = n // 6
    records = scan_folder(food7)
    records = records[:: max(1, len(records) // (n - copies))][: n - copies]
    folder.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(records[:copies]):
        with Image.open(r.path) as im:
            scale = 1.0 if i % 2 else 0.9
            im.convert("RGB").resize((int(im.width * scale), int(im.height * scale))).save(folder / f"copy{i}.jpg",
                                                                                           quality=75)
    return records + scan_folder(folder)


def model_for(backbone: str):
    """The shared pretrained MobileNetV2 where it is there, else random init."""
    weights = SHARED / "weights" / "mobilenetv2_100_in1k.pth"
    if backbone == "mobilenetv2_100" and weights.is_file():
        return zoo.ZooModel(backbone, weights=str(weights)).build()
    return zoo.ZooModel(backbone, pretrained=False).build()


def path_rows(args, backbone: str, first: bool, folders: dict[str, Path], agree_on) -> None:
    """Print one backbone's table, a row per path as it is measured."""
    model = model_for(backbone)
    paths = [p for p in available(PATHS) if not args.paths or any(w in p.name for w in args.paths)]
    kinds = [k for k in ("JPEG", "phone", "PNG") if k in folders and (first or k == "JPEG")]
    ref = vectors(model, PATHS[0], agree_on, args.batch_size, args.num_workers) if agree_on else None
    print(f"\n# {backbone} ({model.weights_id}), {model.data_config['input_size'][1]} px, batch {args.batch_size}, "
          f"{args.num_workers} loader workers, CPU with {torch.get_num_threads()} threads"
          + (f"; agreement on {len(agree_on)} food7 photos" if agree_on else ""), flush=True)
    head = ["path", "forward img/s", *[f"index {k} img/s" for k in kinds], "ratios to fp32 forward",
            *(["cos min", "cos mean", "top-10", "same pairs", "bar"] if ref is not None else [])]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    base = None
    for path in paths:
        fwd = forward_rate(model, path, args.batch_size, args.seconds)
        base = base or fwd
        e2e = [index_rate(model, path, folders[k], args.batch_size, args.num_workers) for k in kinds]
        cells = [path.name, f"{fwd:,.1f}", *[f"{r:,.1f}" for r in e2e],
                 " / ".join(f"{r / base:.2f}" for r in [fwd, *e2e])]
        if ref is not None:
            a = agreement(vectors(model, path, agree_on, args.batch_size, args.num_workers), ref)
            cells += [f"{a['cos_min']:.5f}", f"{a['cos_mean']:.5f}", f"{a['top10']:.3f}",
                      f"{'yes' if a['same_pairs'] else 'no'} ({a['pairs']})", "ok" if meets_bar(a) else "FAILS"]
        print("| " + " | ".join(cells) + " |", flush=True)
        forget_compiled(model)  # one compiled copy of the weights at a time


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        return rss_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", "--backbone", nargs="+", default=["resnet50", "mobilenetv2_100", "vgg16"])
    p.add_argument("--paths", nargs="*", default=[], help="only the paths whose names contain one of these words")
    p.add_argument("--images", type=int, default=200, help="photo-sized JPEGs (500 x 375) to make and index")
    p.add_argument("--phone", type=int, default=40, help="phone-sized JPEGs (4032 x 3024) to index (0: none)")
    p.add_argument("--screens", type=int, default=40, help="PNG screenshots (1920 x 1080) to index (0: none)")
    p.add_argument("--agree", type=int, default=96, help="food7 photos to check agreement on (0: none)")
    p.add_argument("--agree-backbones", nargs="*", default=["resnet50", "mobilenetv2_100"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=8, help="time per forward measurement")
    p.add_argument("--photos", default=None, help="folder to keep the generated pictures in (default: temporary)")
    p.add_argument("--data-path", action="store_true", help="also the loader alone (CPU and device decode)")
    p.add_argument("--rss", type=int, nargs="*", default=[], help="also: peak RSS of `zoo index` at these sizes")
    p.add_argument("--rss-backbone", default="mobilenetv2_100")
    p.add_argument("--rss-size", type=int, default=64, help="input size of the --rss model")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmp = tempfile.TemporaryDirectory()
    where = Path(args.photos or tmp.name)
    folders = {"JPEG": make_photos(where / "photos", args.images)}
    if args.phone:
        folders["phone"] = make_phone_photos(where / "phone", args.phone)
    if args.screens:
        folders["PNG"] = make_screens(where / "screens", args.screens)
    agree_on = agreement_records(args.agree, where / f"copies-{args.agree}")
    for i, backbone in enumerate(args.backbones):
        path_rows(args, backbone, i == 0, folders, agree_on if backbone in args.agree_backbones else [])
    if args.data_path:
        model = zoo.ZooModel(args.backbones[0], pretrained=False).build()
        records = scan_folder(folders["JPEG"])
        print(f"\n# data path alone ({args.backbones[0]} preprocessing, {len(records)} JPEGs of 500x375)")
        print("| what | img/s |\n|---|---:|")
        for mode in ("cpu", "device"):
            r = data_path_rate(model, records, args.batch_size, args.num_workers, mode, device)
            print(f"| data path, {mode} decode | {r:,.1f} |", flush=True)
    if args.rss:
        print(f"\n# peak RSS of `zoo index` ({args.rss_backbone}, random init, {args.rss_size} px, batch 64, 2 workers)")
        print("|    images | peak MiB   | index on disk MiB | img/s |")
        print("|---:|---:|---:|---:|")
        for row in rss_rows(folders["JPEG"], args.rss, args.rss_backbone, args.rss_size):
            print(row, flush=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()
