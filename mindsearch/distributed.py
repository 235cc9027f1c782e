"""Index builds spread over Ray workers; the driver stays the one writer.

clip-retrieval embeds LAION on Spark; mindsearch uses Ray, which starts locally with one call
(``ray.init(num_cpus=N)``) and joins a cluster unchanged (``address="auto"`` or ``ray://...``).
The unit of work is the source's shard, as in a single-process build:

1. the driver lists the shards and skips those the index already finished (resume);
2. a pool of Ray actors, each holding one open_clip encoder (or, for precomputed LAION
   embeddings, only a reader), turns shards into batches, in parallel;
3. the driver takes the batches back *in shard order* and appends each through the index's own
   writer (``Collection.add`` + ``finish_shard``), then builds the FAISS index once.

Why not worker-side Lance fragment commits: appending through the one writer keeps the ids, the
shard bookkeeping and the rollback of a half-written shard exactly those of the single-process
build, so the two builds are equal row for row, and a rerun after any crash resumes at the
first unfinished shard. The table rows move once through the driver; at LAION scale the
embedding work, not that copy, is the cost (docs/scaling.md has the figures).

A killed worker process is restarted by Ray (``max_restarts``) and its shard retried
(``max_task_retries``); since only the driver writes, a retried shard is never written twice.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from mindsearch.errors import MindsearchError

# Test hook: a worker exits hard (as if killed) the first time it reaches this shard; the
# marker file next to it makes the retry go through. Never set outside tests.
_KILL_ENV = "MINDSEARCH_TEST_KILL_SHARD"


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Join ``address`` (a running cluster) or start a local Ray with ``num_cpus`` CPUs.

    A session this call started is shut down on exit; one that was already running (e.g. the
    caller's own ``ray.init``) is left alone.
    """
    from mindsearch.errors import require

    ray = require("ray", "distributed", "distributed builds")
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = num_cpus
        ray.init(**kwargs)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _maybe_die(shard_id: str) -> None:
    target = os.environ.get(_KILL_ENV, "")
    if target and target.split("@")[0] == shard_id:
        marker = Path(target.split("@", 1)[1])
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)


class ImageShardWorker:
    """Ray actor: one open_clip encoder; embeds whole shards of an image source."""

    def __init__(self, source: str, *, model: str, weights: str | None, output: str, strict: bool,
                 shard_size: int, batch_size: int, device: str, store_tokens: bool):
        import torch

        from mindsearch.image_encoders import ImageEncoder
        from mindsearch.image_sources import open_source

        torch.set_num_threads(1)  # one core per actor: Ray schedules actors, not threads
        self.src = open_source(source, strict=strict, shard_size=shard_size)
        self.shards = {s.shard_id: s for s in self.src.shards()}
        self.encoder = ImageEncoder.create(model, output=output, weights=weights, device=device)
        self.batch_size = batch_size
        t, d = self.encoder.tokens, self.encoder.dim
        self.tokens_shape = (t, d) if (store_tokens and t > 1) else None

    def describe(self) -> tuple[dict, int, tuple[int, int] | None]:
        return self.encoder.space, self.encoder.dim, self.tokens_shape

    def embed(self, shard_id: str) -> tuple[str, dict, int, list[dict]]:
        from mindsearch.engine import image_batch
        from mindsearch.image_encoders import embed_shards

        _maybe_die(shard_id)
        before = len(self.src.skipped)
        for _, records, emb in embed_shards([self.shards[shard_id]], self.encoder,
                                            batch_size=self.batch_size, num_workers=1, progress=False):
            batch = image_batch(records, emb, self.encoder.space, self.tokens_shape)
            return shard_id, batch, len(records), list(self.src.skipped[before:])
        raise MindsearchError(f"shard {shard_id} produced nothing")  # embed_shards yields every shard


class EmbeddingShardWorker:
    """Ray actor: reads and normalises precomputed clip-retrieval / LAION shards."""

    def read(self, npy: str, meta: str | None, shard_id: str, start_id: int) -> tuple[str, dict, None, list]:
        from mindsearch.indexes.clip_retrieval import read_shard

        _maybe_die(shard_id)
        return shard_id, read_shard(npy, meta, shard=shard_id, start_id=start_id), None, []


def _actor_options(max_restarts: int) -> dict:
    opts: dict[str, Any] = {"num_cpus": 1, "max_restarts": max_restarts, "max_task_retries": max_restarts}
    if os.environ.get(_KILL_ENV):  # workers get their environment from Ray, not from the driver
        opts["runtime_env"] = {"env_vars": {_KILL_ENV: os.environ[_KILL_ENV]}}
    return opts


def build_from_images(root: str | Path, name: str, source: str | Path, *, model: str = "ViT-L-14",
                      weights: str | None = None, output: str = "final", store_tokens: bool = False,
                      strict: bool = False, batch_size: int = 32, shard_size: int = 1000,
                      workers: int = 2, kind: str = "auto", device: str = "cpu",
                      address: str | None = None, max_restarts: int = 3, progress=None,
                      table_uri: str | None = None) -> dict:
    """``Engine.build_from_images`` with the embedding spread over ``workers`` Ray actors."""
    from mindsearch.engine import Engine, ingest
    from mindsearch.image_sources import open_source

    say = progress or (lambda msg: None)
    if workers < 1:
        raise MindsearchError(f"workers must be >= 1 (got {workers})")
    engine = Engine(root)
    src = open_source(source, strict=strict, shard_size=shard_size)
    shard_ids = [s.shard_id for s in src.shards()]
    skipped: list[dict] = []
    with ray_session(address, num_cpus=workers) as ray:
        from ray.util import ActorPool

        Worker = ray.remote(**_actor_options(max_restarts))(ImageShardWorker)
        actors = [Worker.remote(str(source), model=model, weights=weights, output=output, strict=strict,
                                shard_size=shard_size, batch_size=batch_size, device=device,
                                store_tokens=store_tokens) for _ in range(workers)]
        space, dim, tokens_shape = ray.get(actors[0].describe.remote())
        with engine.create_or_resume(name, space, dim, tokens_shape, table_uri=table_uri) as coll:
            done = set(coll.finished_shards)
            todo = [s for s in shard_ids if s not in done]
            say(f"index {name}: {len(done)} shard(s) already done, {len(todo)} to embed on {workers} "
                "Ray worker(s)")

            def results():
                for shard_id, batch, n, bad in ActorPool(actors).map(lambda a, s: a.embed.remote(s), todo):
                    skipped.extend(bad)
                    yield shard_id, batch, n

            ingest(coll, results(), lambda s: say(f"index {name}: shard {s} added ({coll.count} images)"),
                   source=src.describe())
            rec = coll.build_index(kind)
            return {"name": name, "count": coll.count, "index": rec, "skipped": skipped, "space": space,
                    "table_version": coll.table_version, "workers": workers}


def build_from_embeddings(root: str | Path, name: str, directory: str | Path, *, space: dict,
                          workers: int = 2, kind: str = "auto", address: str | None = None,
                          max_restarts: int = 3, progress=None, table_uri: str | None = None) -> dict:
    """``Engine.build_from_embeddings`` (clip-retrieval / LAION layout) with the shard reading and
    normalisation spread over Ray actors."""
    import numpy as np

    from mindsearch.engine import Engine, ingest
    from mindsearch.indexes import clip_retrieval

    say = progress or (lambda msg: None)
    engine = Engine(root)
    dim = clip_retrieval.dim(directory)
    space = {**space, "dim": dim, "tokens": 1}
    with engine.create_or_resume(name, space, dim, None, table_uri=table_uri,
                                 extra_columns={"caption": "string", "url": "string"}) as coll:
        done = set(coll.finished_shards)
        todo, start = [], 0
        for shard_id, npy, meta in clip_retrieval.list_shards(directory):
            if shard_id not in done:
                todo.append((str(npy), None if meta is None else str(meta), shard_id, start))
            start += int(np.load(npy, mmap_mode="r", allow_pickle=False).shape[0])  # header only
        with ray_session(address, num_cpus=workers) as ray:
            from ray.util import ActorPool

            Worker = ray.remote(**_actor_options(max_restarts))(EmbeddingShardWorker)
            pool = ActorPool([Worker.remote() for _ in range(workers)])
            batches = ((s, b, n) for s, b, n, _ in pool.map(lambda a, t: a.read.remote(*t), todo))
            ingest(coll, batches, lambda s: say(f"index {name}: shard {s} added ({coll.count} vectors)"),
                   source={"kind": "clip-retrieval", "path": str(Path(directory).resolve())})
        rec = coll.build_index(kind)
        return {"name": name, "count": coll.count, "index": rec, "space": space,
                "table_version": coll.table_version, "workers": workers}


__all__ = ["ray_session", "build_from_images", "build_from_embeddings"]
