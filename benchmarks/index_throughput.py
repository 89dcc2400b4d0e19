"""`zoo index` throughput on a folder next to the bare model forward on decoded tensors.

    python benchmarks/index_throughput.py [--images ../shared/data/food7] [--batch-size 32]

The ratio (index / forward) says what the data path (decode, resize, collate) costs.
Prints a table; numbers name the weights that produced them.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import zoo
from zoo.data.images import scan_folder
from zoo.embed.runner import embed

SHARED = Path(__file__).resolve().parents[2] / "shared"


def models():
    weights = SHARED / "weights" / "mobilenetv2_100_in1k.pth"
    if weights.is_file():
        yield "mobilenetv2_100 (shared)", zoo.ZooModel("timm/mobilenetv2_100", weights=str(weights))
    yield "resnet50", zoo.ZooModel("resnet50", pretrained=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", default=str(SHARED / "data" / "food7"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2)
    args = p.parse_args()
    records = scan_folder(args.images)
    rows = []
    for name, model in models():
        model.build().eval()
        t = time.perf_counter()
        emb = embed(model, records, batch_size=args.batch_size, num_workers=args.num_workers)
        index_ips = len(emb.records) / (time.perf_counter() - t)
        x = torch.randn(args.batch_size, *model.data_config["input_size"])
        with torch.inference_mode():
            model(x)  # warm-up
            n, t = 0, time.perf_counter()
            while time.perf_counter() - t < 20:
                model(x)
                n += len(x)
        fwd_ips = n / (time.perf_counter() - t)
        rows.append((name, model.weights_id[:40], index_ips, fwd_ips, index_ips / fwd_ips))
    print(f"\n{len(records)} files in {args.images}; batch {args.batch_size}; {torch.get_num_threads()} threads")
    print(f"{'model':26s} {'weights':42s} {'index img/s':>11s} {'forward img/s':>13s} {'ratio':>6s}")
    for r in rows:
        print(f"{r[0]:26s} {r[1]:42s} {r[2]:11.1f} {r[3]:13.1f} {r[4]:6.2f}")


if __name__ == "__main__":
    main()
