"""Image-embedding throughput: ``embed_images`` (decode + preprocess in threads, in parallel with
the forward pass) against a bare open_clip forward loop over the same images already decoded
and preprocessed. Target: the pipeline reaches >= 0.9x the bare loop's images/s.

    python -m benchmarks.bench_embed [--quick] [--n 256] [--batch-size 32] [--out bench.json]

Random-weight ViT-B-32 on CPU (no download); images are synthetic 425x425 JPEGs (NSD stimulus
size) written to a temporary folder. Runs alternate bare/pipeline to spread load drift; the
ratio uses the medians. Records torch threads, CPU count and load average (ANCHORS 7.5: other
processes on a 2-core machine change these numbers a lot).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _make_images(folder: Path, n: int, size: int = 425, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        a, b, c = rng.uniform(0.5, 4.0, 3)
        base = np.stack([np.sin(a * 6 * xx + i), np.cos(b * 6 * yy - i), np.sin(c * 6 * (xx + yy))], -1)
        img = (127 + 90 * base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i:05d}.jpg", quality=90)


def _bare_loop(visual, batches) -> tuple[float, float]:
    """Wall and process-CPU seconds of a plain forward loop over pre-made batches."""
    import torch

    c0, t0 = time.process_time(), time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            visual(x)
    return time.perf_counter() - t0, time.process_time() - c0


def _pipeline(source, encoder, batch_size: int, workers: int) -> tuple[float, float, int]:
    from mindsearch.image_encoders import embed_images

    n = 0
    c0, t0 = time.process_time(), time.perf_counter()
    for recs, _ in embed_images(source, encoder, batch_size=batch_size, num_workers=workers,
                                progress=False):
        n += len(recs)
    return time.perf_counter() - t0, time.process_time() - c0, n


def run(n: int, batch_size: int, workers: int, repeats: int, model: str, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    import open_clip

    from mindsearch.image_encoders import ImageEncoder
    from mindsearch.image_sources import FolderSource

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    enc = ImageEncoder.create(model, output="final", weights="random", device="cpu")
    build_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="mindsearch-bench-") as tmp:
        folder = Path(tmp)
        _make_images(folder, n)
        source = FolderSource(folder, shard_size=max(n, 1))

        # decode + resize/crop on this thread, then batch float conversion + normalisation
        # (bit-identical to stacking open_clip's preprocess outputs; tests check that)
        t0 = time.perf_counter()
        arrays = [enc.prepare(rec.image) for rec in source]
        batches = [enc.collate(arrays[i:i + batch_size]) for i in range(0, n, batch_size)]
        decode_s = time.perf_counter() - t0
        del arrays

        # warm-up (allocator, first-call overheads) on one batch each way
        _bare_loop(enc.visual, batches[:1])
        enc.encode(batches[0])

        bare, pipe, bare_cpu, pipe_cpu = [], [], [], []
        for _ in range(repeats):
            secs, cpu = _bare_loop(enc.visual, batches)
            bare.append(n / secs)
            bare_cpu.append(cpu / n)
            secs, cpu, got = _pipeline(source, enc, batch_size, workers)
            if got != n:
                raise RuntimeError(f"pipeline embedded {got} of {n} images")
            pipe.append(n / secs)
            pipe_cpu.append(cpu / n)
    load_after = os.getloadavg()

    bare_med, pipe_med = statistics.median(bare), statistics.median(pipe)
    return {
        "benchmark": "image_embedding_throughput",
        "model": model,
        "weights": "random",
        "output": "final",
        "device": "cpu",
        "n_images": n,
        "image_size": "425x425 jpeg",
        "batch_size": batch_size,
        "decode_workers": workers,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in load_after],
        "build_s": round(build_s, 3),
        "decode_preprocess_images_per_s_1thread": round(n / decode_s, 1),
        "bare_images_per_s": [round(x, 2) for x in bare],
        "pipeline_images_per_s": [round(x, 2) for x in pipe],
        "bare_cpu_s_per_image": [round(x, 4) for x in bare_cpu],
        "pipeline_cpu_s_per_image": [round(x, 4) for x in pipe_cpu],
        "bare_median": round(bare_med, 2),
        "pipeline_median": round(pipe_med, 2),
        "ratio": round(pipe_med / bare_med, 3),
        "target_ratio": 0.9,
        "meets_target": pipe_med / bare_med >= 0.9,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "open_clip": open_clip.__version__},
        "machine": platform.machine(),
    }


def _table(r: dict) -> str:
    rows = [
        ("model", f"{r['model']} ({r['weights']} weights, {r['output']})"),
        ("images x batch", f"{r['n_images']} x {r['batch_size']} ({r['image_size']})"),
        ("torch threads / cpus", f"{r['torch_threads']} / {r['cpu_count']}"),
        ("decode workers", str(r["decode_workers"])),
        ("load avg before/after", f"{r['load_avg_before'][0]} / {r['load_avg_after'][0]}"),
        ("decode+preprocess (1 thread)", f"{r['decode_preprocess_images_per_s_1thread']} img/s"),
        ("bare forward loop", f"{r['bare_median']} img/s  runs {r['bare_images_per_s']}"),
        ("embed_images pipeline", f"{r['pipeline_median']} img/s  runs {r['pipeline_images_per_s']}"),
        ("CPU s/image bare | pipeline", f"{statistics.median(r['bare_cpu_s_per_image']):.4f} | "
                                        f"{statistics.median(r['pipeline_cpu_s_per_image']):.4f}"),
        ("ratio (target >= 0.9)", f"{r['ratio']}  {'OK' if r['meets_target'] else 'BELOW TARGET'}"),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(w)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_embed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 images, 1 repeat")
    ap.add_argument("--n", type=int, default=None, help="images (default 256; --quick 64)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="decode threads for embed_images")
    ap.add_argument("--repeats", type=int, default=None, help="alternating runs (default 3; --quick 1)")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)
    n = args.n or (64 if args.quick else 256)
    repeats = args.repeats or (1 if args.quick else 3)
    result = run(n, args.batch_size, args.workers, repeats, args.model, args.threads)
    result["quick"] = bool(args.quick)
    print(_table(result))
    if args.out:
        from mindsearch.io import write_json

        write_json(args.out, result)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
