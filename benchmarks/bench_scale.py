"""Throughput per worker of the scale-out paths, the inputs of docs/scaling.md.

    python -m benchmarks.bench_scale [--quick] [--images 96] [--out bench_scale.json]

Measures, on this machine:
1. image embedding, one process, one torch thread: random-weight ViT-B-32 and ViT-L-14
   (open_clip, no download), images/s;
2. the Ray build (mindsearch.distributed) over webdataset shards with 1 and 2 local workers,
   ViT-B-32: images/s end to end (Ray start-up excluded, table writes included) and the speed-up;
3. FAISS: vectors/s added to IVF-Flat, and the sharded recipe (indexes/sharded.py) with 1 and
   2 worker processes;
4. exact and HNSW search QPS at 100k 768-d vectors, one thread.
Prints a table and writes JSON with the machine's CPU count and load averages (other processes
on a 2-core machine change these numbers a lot: read them with the load beside them).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np


def _write_tars(folder: Path, n: int, per_tar: int, size: int = 256) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(0, n, per_tar):
        with tarfile.open(folder / f"{t // per_tar:05d}.tar", "w") as tf:
            for i in range(t, min(n, t + per_tar)):
                buf = io.BytesIO()
                img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
                Image.fromarray(img).save(buf, format="JPEG", quality=90)
                info = tarfile.TarInfo(f"{i:06d}.jpg")
                info.size = buf.tell()
                buf.seek(0)
                tf.addfile(info, buf)


def bench_embed(model: str, n: int, batch: int = 16) -> dict:
    import torch

    from mindsearch.image_encoders import ImageEncoder

    torch.set_num_threads(1)
    enc = ImageEncoder.create(model, weights="random:0")
    x = torch.rand(batch, 3, *enc.image_size)
    with torch.inference_mode():
        enc.visual(x[:2])  # warm-up
        t0 = time.perf_counter()
        done = 0
        while done < n:
            enc.visual(x)
            done += batch
        dt = time.perf_counter() - t0
    return {"model": model, "images": done, "seconds": round(dt, 2), "images_per_s": round(done / dt, 2)}


def bench_ray(tars: Path, workers: int, root: Path) -> dict:
    from mindsearch.distributed import build_from_images, ray_session

    with ray_session(num_cpus=workers):
        t0 = time.perf_counter()
        res = build_from_images(root, f"w{workers}", tars, model="ViT-B-32", weights="random:0",
                                workers=workers, batch_size=16)
        dt = time.perf_counter() - t0
    return {"workers": workers, "images": res["count"], "seconds": round(dt, 2),
            "images_per_s": round(res["count"] / dt, 2)}


def bench_faiss(n: int, d: int, folder: Path) -> dict:
    import faiss

    from mindsearch.indexes.sharded import build_sharded

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    nlist = 256
    key = f"IVF{nlist},Flat"
    sample = x[: 40 * nlist]
    idx = faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT)
    idx.train(sample)
    t0 = time.perf_counter()
    idx.add(x)
    add_s = time.perf_counter() - t0
    shards = []
    for i, part in enumerate(np.array_split(np.arange(n), 4)):
        np.save(folder / f"v{i}.npy", x[part])
        np.save(folder / f"i{i}.npy", part.astype(np.int64))
        shards.append((folder / f"v{i}.npy", folder / f"i{i}.npy"))
    out = {"n": n, "d": d, "key": key, "add_vectors_per_s_1thread": round(n / add_s)}
    for w in (1, 2):
        rec = build_sharded(key, shards, folder / f"s{w}.faiss", sample=sample, workers=w)
        out[f"sharded_{w}_workers"] = {k: rec[k] for k in ("train_s", "add_s", "merge_s")}
        out[f"sharded_{w}_workers"]["add_vectors_per_s"] = round(n / rec["add_s"])
    return out


def bench_search(n: int, d: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:300] + rng.normal(size=(300, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    out = {"n": n, "d": d}
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    t0 = time.perf_counter()
    flat.search(q, 16)
    out["exact_qps_batch300"] = round(300 / (time.perf_counter() - t0), 1)
    hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    hnsw.add(x)
    out["hnsw_add_vectors_per_s"] = round(n / (time.perf_counter() - t0))
    hnsw.hnsw.efSearch = 512
    t0 = time.perf_counter()
    for row in q[:50]:
        hnsw.search(row[None], 16)
    out["hnsw_qps_single"] = round(50 / (time.perf_counter() - t0), 1)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a minute or two)")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--out", default="bench_scale.json")
    args = ap.parse_args(argv)
    n_img = args.images or (48 if args.quick else 192)
    res: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                             "load_before": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        res["embed"] = [bench_embed("ViT-B-32", n_img), bench_embed("ViT-L-14", max(16, n_img // 8))]
        _write_tars(tmp / "wds", n_img, per_tar=max(8, n_img // 8))
        res["ray"] = [bench_ray(tmp / "wds", w, tmp / "idx") for w in (1, 2)]
        res["ray_speedup"] = round(res["ray"][1]["images_per_s"] / res["ray"][0]["images_per_s"], 2)
        (tmp / "f").mkdir()
        res["faiss"] = bench_faiss(50_000 if args.quick else 200_000, 768, tmp / "f")
        res["search"] = bench_search(20_000 if args.quick else 100_000, 768)
    res["machine"]["load_after"] = os.getloadavg()

    rows = [("embed ViT-B-32, 1 thread", f"{res['embed'][0]['images_per_s']} images/s"),
            ("embed ViT-L-14, 1 thread", f"{res['embed'][1]['images_per_s']} images/s"),
            ("Ray build, 1 worker (ViT-B-32)", f"{res['ray'][0]['images_per_s']} images/s"),
            ("Ray build, 2 workers (ViT-B-32)", f"{res['ray'][1]['images_per_s']} images/s "
                                                f"({res['ray_speedup']}x)"),
            ("FAISS IVF add, 1 thread", f"{res['faiss']['add_vectors_per_s_1thread']} vectors/s"),
            ("sharded add, 1 / 2 workers", f"{res['faiss']['sharded_1_workers']['add_vectors_per_s']} / "
                                           f"{res['faiss']['sharded_2_workers']['add_vectors_per_s']} vectors/s"),
            (f"exact search {res['search']['n']}x768, batch 300", f"{res['search']['exact_qps_batch300']} QPS"),
            ("HNSW32 efSearch 512, single queries", f"{res['search']['hnsw_qps_single']} QPS"),
            ("HNSW32 add, 1 thread", f"{res['search']['hnsw_add_vectors_per_s']} vectors/s")]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  value")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    print(f"load average before {res['machine']['load_before']}, after {res['machine']['load_after']}")
    Path(args.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
