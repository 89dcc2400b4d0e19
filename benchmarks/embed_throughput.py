"""Where embedding time goes: the bare model forward, the data path alone, and `zoo index` end
to end, on photo-sized JPEGs (500 x 375); and peak memory while indexing N images.

    python benchmarks/embed_throughput.py [--backbone resnet50] [--images 400] [--batch-size 32]
        [--num-workers 2] [--seconds 20] [--rss 10000 100000]

Runs on the CPU, and on a GPU when there is one (the forward rows then add bf16 and bf16 +
channels_last, and the device-decode row uses nvJPEG). The photos are random 500 x 375 crops of
../shared/data/food7 when it is there (else smooth synthetic pictures), written once to a
temporary folder. Weights are random (speed does not depend on them).

Rows (images per second, and the ratio to the forward zoo runs: bf16 + channels_last on a
GPU, fp32 on the CPU):
  forward fp32 / bf16 / bf16 + channels_last    model on device-resident random tensors
  data path, CPU decode                         loader workers: Pillow decode + timm resize/crop, uint8
  data path, device decode                      workers read bytes; JPEGs decoded + resized on the device
  zoo index                                     scan, embed (shards), FAISS index, save

--rss N...: `zoo index` of N images (hard links to the photos) in a child process, each size
on its own, with a small model; prints its peak resident memory and the index's size on disk.
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


def forward_rows(model, batch_size: int, seconds: float, device: torch.device) -> list[tuple[str, float]]:
    model = model.to(device).eval()
    x = torch.randn(batch_size, *model.data_config["input_size"], device=device)
    rows = []
    with torch.inference_mode():
        rows.append(("forward fp32", rate(lambda: model(x), seconds, batch_size)))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            rows.append(("forward bf16", rate(lambda: model(x), seconds, batch_size)))
            model.to(memory_format=torch.channels_last)
            xc = x.contiguous(memory_format=torch.channels_last)
            rows.append(("forward bf16 + channels_last", rate(lambda: model(xc), seconds, batch_size)))
            model.to(memory_format=torch.contiguous_format)
    return rows


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


def end_to_end_rate(model, folder: Path, batch_size: int, num_workers: int) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = default_trainer(False)
        t = time.perf_counter()
        index = zoo.build_index(folder, model, out=Path(tmp) / "bench.index", trainer=trainer,
                                batch_size=batch_size, num_workers=num_workers)
        return len(index) / (time.perf_counter() - t), str(trainer.precision)


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


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        return rss_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--images", type=int, default=400, help="photo-sized JPEGs to make and index")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=20, help="time per forward measurement")
    p.add_argument("--photos", default=None, help="folder to keep the generated JPEGs in (default: temporary)")
    p.add_argument("--rss", type=int, nargs="*", default=[], help="also: peak RSS of `zoo index` at these sizes")
    p.add_argument("--rss-backbone", default="mobilenetv2_100")
    p.add_argument("--rss-size", type=int, default=64, help="input size of the --rss model")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmp = tempfile.TemporaryDirectory()
    photos = make_photos(Path(args.photos or tmp.name) / "photos", args.images)
    records = scan_folder(photos)
    model = zoo.ZooModel(args.backbone, pretrained=False).build()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {args.backbone} ({model.weights_id}), {model.data_config['input_size'][1]} px, {len(records)} JPEGs of 500x375, "
          f"batch {args.batch_size}, {args.num_workers} loader workers; {name}", flush=True)

    rows = forward_rows(model, args.batch_size, args.seconds, device)
    rows.append(("data path, CPU decode (uint8 to the device)",
                 data_path_rate(model, records, args.batch_size, args.num_workers, "cpu", device)))
    rows.append((f"data path, device decode ({'nvJPEG' if device.type == 'cuda' else 'libjpeg in the main process'})",
                 data_path_rate(model, records, args.batch_size, args.num_workers, "device", device)))
    e2e, precision = end_to_end_rate(model, photos, args.batch_size, args.num_workers)
    rows.append((f"zoo index end to end ({precision})", e2e))
    # the forward zoo runs by default: bf16 + channels_last on a GPU, fp32 on the CPU
    best = rows[2][1] if device.type == "cuda" else rows[0][1]
    print(f"| what | img/s | / {rows[2][0] if device.type == 'cuda' else rows[0][0]} |")
    print("|---|---:|---:|")
    for n, r in rows:
        print(f"| {n} | {r:,.1f} | {r / best:.2f} |")
    if args.rss:
        print(f"\n# peak RSS of `zoo index` ({args.rss_backbone}, random init, {args.rss_size} px, batch 64, 2 workers)")
        print("|    images | peak MiB   | index on disk MiB | img/s |")
        print("|---:|---:|---:|---:|")
        for row in rss_rows(photos, args.rss, args.rss_backbone, args.rss_size):
            print(row, flush=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()
