"""CLIP image encoders (open_clip) and the parallel image-embedding loop.

Three outputs, each a distinct embedding space (see docs/interfaces.md, "Embedding space record"):

``final``   (1, D) the final image embedding, ``encode_image`` without L2 normalisation
            (768-d for ViT-L-14). Pooling ``"self"``: the single token is the vector.
``hidden``  (1 + grid², D) MindEye1's target: the last transformer block's output *with* CLS,
            after ``ln_post``, ``@ proj`` (257×768 for ViT-L-14), every token divided by the CLS
            token's L2 norm (ANCHORS 2.1). Token 0 is ``encode_image / ||encode_image||``.
            Pooling ``"first"``.
``tokens``  (grid², width) MindEye2's target: open_clip ``output_tokens=True`` patch tokens
            (after ``ln_post``, no CLS, no projection, no normalisation): 256×1664 for
            ViT-bigG-14. There is no CLS token, so pooling is ``"mean"`` (mean over the patch
            tokens): consumers that need one vector per image must read the space's
            ``pooling`` rather than assume token 0.

Weights (``ImageEncoder.create(weights=...)``):

* a file (open_clip checkpoint: ``.safetensors`` preferred, ``.bin``/``.pt``/``.pth`` loaded by
  open_clip with ``torch.load(weights_only=True)``) or a folder holding
  ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin`` (and similar names);
  the space records the file's ``file_fingerprint``. OpenAI-trained weights need the
  ``-quickgelu`` model name (``ViT-L-14-quickgelu``): nothing in a state dict says so.
* ``"random"`` or ``"random:SEED"``: explicit opt-in to random weights (a warning says the
  embeddings are meaningless); recorded as ``"random:SEED"``.
* ``None``: the hub's default pretrained tag for the model (``openai`` for ViT-L-14 and
  ViT-B-32, ``laion2b_s39b_b160k`` for ViT-bigG-14), or ``"hub:TAG"`` for another tag.
  Needs the network or a warm cache; offline it fails with a MindsearchError that says to pass
  ``--weights PATH`` (or ``random``). The space records the downloaded file's fingerprint, so
  the same weights loaded from a local copy give the same space.

``model`` is an open_clip model name or a path to a model-config JSON (``embed_dim``,
``vision_cfg``, ``text_cfg``), registered with ``open_clip.add_model_config`` under its stem.

torch and open_clip load only when an encoder is created.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from mindsearch.errors import MindsearchError
from mindsearch.image_sources import ImageRecord, ImageSource, Shard

log = logging.getLogger("mindsearch.images")

OUTPUTS = ("final", "hidden", "tokens")
POOLING = {"final": "self", "hidden": "first", "tokens": "mean"}
DEFAULT_TAGS = {
    "ViT-L-14": "openai",
    "ViT-L-14-quickgelu": "openai",
    "ViT-B-32": "openai",
    "ViT-B-32-quickgelu": "openai",
    "ViT-bigG-14": "laion2b_s39b_b160k",
}
WEIGHT_FILES = (  # looked for, in this order, in a weights folder
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "pytorch_model.bin",
    "model.pth",
)
PRECISIONS = ("fp32", "fp16", "bf16", "pure_fp16", "pure_bf16")


def _resolve_model_name(model: str | os.PathLike) -> str:
    """A registered open_clip name, or register a model-config JSON and return its name."""
    import open_clip

    s = str(model)
    if s.endswith(".json") or Path(s).is_file():
        import json

        path = Path(s)
        if not path.is_file():
            raise MindsearchError("model config JSON not found", path)
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise MindsearchError(f"not a readable model config JSON ({exc})", path) from None
        if isinstance(cfg, dict) and "model_cfg" in cfg:
            raise MindsearchError("use a bare model config (embed_dim, vision_cfg, text_cfg), "
                                  "not an open_clip_config.json", path)
        if not (isinstance(cfg, dict) and all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg"))):
            raise MindsearchError("model config must have embed_dim, vision_cfg and text_cfg", path)
        name = path.stem
        existing = open_clip.get_model_config(name)
        if existing is not None and existing != cfg:
            raise MindsearchError(f"config name {name!r} clashes with a different open_clip model "
                                  "config; rename the file", path)
        if existing is None:
            open_clip.add_model_config(path)
        return name
    if open_clip.get_model_config(s.replace("/", "-")) is None:
        raise MindsearchError(f"unknown open_clip model {s!r} (see open_clip.list_models(), or pass "
                              "a model-config JSON path)")
    return s.replace("/", "-")


def _find_weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt*"))
    if len(found) == 1:
        return found[0]
    raise MindsearchError("no open_clip weights in this folder (expected one of "
                          f"{', '.join(WEIGHT_FILES[:4])})", folder)


class ImageEncoder:
    """An open_clip image tower producing one of the three target spaces (see module doc)."""

    def __init__(self, visual: Any, *, model: str, output: str, weights_id: str, device: str,
                 precision: str, weights_path: str | None = None):
        import torch
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.visual = visual.eval()
        self.model_name = model
        self.output = output
        self.weights_id = weights_id
        self.weights_path = weights_path
        self.device = torch.device(device)
        self.precision = precision
        conv = getattr(visual, "conv1", None)  # mixed precision ('bf16'): the patch conv's dtype
        self.dtype = conv.weight.dtype if conv is not None else next(visual.parameters()).dtype
        self.preprocess = image_transform_v2(PreprocessCfg(**visual.preprocess_cfg), is_train=False)
        self._pil_stage, self._normalize = _split_transform(self.preprocess)
        self.tokens, self.dim = self._shape()

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(cls, model: str | os.PathLike = "ViT-L-14", output: str = "final",
               weights: str | os.PathLike | None = None, device: str = "cpu",
               precision: str = "fp32") -> "ImageEncoder":
        if output not in OUTPUTS:
            raise MindsearchError(f"output must be one of {', '.join(OUTPUTS)} (got {output!r})")
        if precision not in PRECISIONS:
            raise MindsearchError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
        import open_clip
        import torch

        name = _resolve_model_name(model)
        kwargs: dict = {"precision": precision, "device": device}
        weights_path: str | None = None
        w = None if weights is None else str(weights)

        if w is not None and (w == "random" or w.startswith("random:")):
            try:
                seed = int(w.split(":", 1)[1]) if ":" in w else 0
            except ValueError:
                raise MindsearchError(f"weights 'random:SEED' needs an integer seed (got {w!r})") from None
            log.warning("RANDOM WEIGHTS for %s: embeddings are meaningless (for tests and "
                        "benchmarks only); pass --weights PATH for real CLIP weights", name)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model_obj = cls._build(name, None, kwargs, None)
            weights_id = f"random:{seed}"
        elif w is None or w.startswith("hub:") or (not Path(w).exists() and _is_tag(name, w)):
            tag = w[4:] if (w and w.startswith("hub:")) else (w or _default_tag(name))
            weights_path = _download_tag(name, tag)
            tag_cfg = open_clip.get_pretrained_cfg(name, tag)
            if tag_cfg.get("quick_gelu") and not open_clip.get_model_config(name).get("quick_gelu"):
                # OpenAI weights use QuickGELU: record the architecture actually run, so the same
                # file loaded later as weights=PATH with model "<name>-quickgelu" is the same space
                kwargs["force_quick_gelu"] = True
                if open_clip.get_model_config(f"{name}-quickgelu") is not None:
                    name = f"{name}-quickgelu"
            pp = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
            kwargs["force_preprocess_cfg"] = pp or None
            model_obj = cls._build(name, weights_path, kwargs, weights_path)
            weights_id = _fingerprint(weights_path)
        else:
            p = Path(w)
            if p.is_dir():
                p = _find_weights_file(p)
            elif not p.is_file():
                raise MindsearchError("weights file not found (pass a file or folder of open_clip "
                                      "weights, 'random', or omit for the hub weights)", p)
            weights_path = str(p)
            model_obj = cls._build(name, weights_path, kwargs, weights_path)
            weights_id = _fingerprint(weights_path)

        visual = model_obj.visual
        del model_obj  # drop the text tower
        return cls(visual, model=name, output=output, weights_id=weights_id, device=device,
                   precision=precision, weights_path=weights_path)

    @staticmethod
    def _build(name: str, pretrained: str | None, kwargs: dict, err_path: str | None):
        import open_clip

        try:
            return open_clip.create_model(name, pretrained=pretrained, **kwargs)
        except MindsearchError:
            raise
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            if err_path is None:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MindsearchError(f"cannot load these weights into open_clip model {name} ({first})",
                                  err_path) from None
        except Exception as exc:  # unpickling refusals, safetensors header errors, ...
            if err_path is None:
                raise
            raise MindsearchError(f"cannot read open_clip weights ({type(exc).__name__}: {exc})",
                                  err_path) from None

    # -- description ----------------------------------------------------------------------
    def _shape(self) -> tuple[int, int]:
        v = self.visual
        from open_clip.transformer import VisionTransformer

        if isinstance(v, VisionTransformer):
            gh, gw = v.grid_size
            width = v.conv1.out_channels
            out_dim = v.proj.shape[1] if v.proj is not None else width
            if self.output == "final":
                return 1, int(v.output_dim)
            if self.output == "hidden":
                if v.attn_pool is not None or v.final_ln_after_pool or v.pool_type != "tok" or v.proj is None:
                    raise MindsearchError(
                        f"output 'hidden' needs a CLS-token ViT with a projection; {self.model_name} "
                        "pools differently (use 'final' or 'tokens')")
                return gh * gw + 1, int(out_dim)
            if v.attn_pool is not None:
                raise MindsearchError(f"output 'tokens' is not supported for attention-pooled "
                                      f"{self.model_name}")
            return gh * gw, int(width)
        if self.output != "final":
            raise MindsearchError(f"output {self.output!r} needs an open_clip VisionTransformer; "
                                  f"{self.model_name} has {type(v).__name__} (use 'final')")
        import torch

        size = self.visual.preprocess_cfg.get("size", 224)
        size = (size, size) if isinstance(size, int) else tuple(size)
        with torch.no_grad():
            out = self.visual(torch.zeros(1, 3, *size, dtype=self.dtype, device=self.device))
        if isinstance(out, tuple):
            out = out[0]
        return 1, int(out.shape[-1])

    @property
    def space(self) -> dict:
        """The embedding space record (docs/interfaces.md)."""
        return {
            "name": f"{self.model_name}/{self.output}",
            "model": self.model_name,
            "layer": self.output,
            "pooling": POOLING[self.output],
            "weights": self.weights_id,
            "tokens": int(self.tokens),
            "dim": int(self.dim),
        }

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.visual.preprocess_cfg.get("size", 224)
        return (size, size) if isinstance(size, int) else tuple(size)

    # -- preprocessing in two stages ------------------------------------------------------
    def prepare(self, image: Any) -> Any:
        """Per-image part of ``preprocess`` (thread-safe, for decode workers): the PIL resize and
        crop, returned as a uint8 (H, W, 3) array. The float conversion and normalisation run
        batched in :meth:`collate` on the calling thread, so worker threads never start torch's
        intra-op thread pools beside the forward pass. Falls back to the full ``preprocess``
        (a tensor) for transforms it cannot split."""
        if self._pil_stage is None:
            return self.preprocess(image)
        out = self._pil_stage(image)
        if getattr(out, "mode", None) is None:  # not a PIL image: finish here
            return self.preprocess(image)
        return np.asarray(out.convert("RGB") if out.mode != "RGB" else out, dtype=np.uint8)

    def collate(self, items: list) -> Any:
        """Stack :meth:`prepare` outputs into the model's input batch (n, 3, H, W) float32;
        the same numbers as ``torch.stack([preprocess(img) ...])``."""
        import torch

        if self._normalize is not None and all(isinstance(a, np.ndarray) for a in items):
            x = torch.from_numpy(np.stack(items)).permute(0, 3, 1, 2).contiguous()
            x = x.to(torch.get_default_dtype()).div(255)
            for mean, std in self._normalize:
                m = torch.as_tensor(mean, dtype=x.dtype)[None, :, None, None]
                sd = torch.as_tensor(std, dtype=x.dtype)[None, :, None, None]
                x.sub_(m).div_(sd)
            return x
        return torch.stack([torch.as_tensor(a) if isinstance(a, np.ndarray) else a for a in items])

    # -- encoding -------------------------------------------------------------------------
    def encode(self, batch: Any) -> np.ndarray:
        """Preprocessed images (n, 3, H, W) -> float32 numpy (n, tokens, dim)."""
        import torch

        x = torch.as_tensor(batch).to(self.device, self.dtype)
        if x.ndim == 3:
            x = x[None]
        v = self.visual
        with torch.inference_mode():
            if self.output == "final":
                out = v(x)
                if isinstance(out, tuple):
                    out = out[0]
                out = out[:, None, :]
            elif self.output == "hidden":
                inter = v.forward_intermediates(
                    x, indices=1, output_fmt="NLC", output_extra_tokens=True,
                    normalize_intermediates=True, intermediates_only=True)
                h = torch.cat([inter["image_intermediates_prefix"][0], inter["image_intermediates"][0]], dim=1)
                h = h @ v.proj
                out = h / h[:, :1].norm(dim=-1, keepdim=True)
            else:
                prev = v.output_tokens
                v.output_tokens = True
                try:
                    _, out = v(x)
                finally:
                    v.output_tokens = prev
        return out.float().cpu().numpy()

    def __repr__(self) -> str:
        return (f"ImageEncoder({self.model_name}, output={self.output}, weights={self.weights_id}, "
                f"shape=({self.tokens}, {self.dim}), device={self.device}, {self.precision})")


def _split_transform(preprocess) -> tuple[Any, list | None]:
    """Split open_clip's eval Compose into (PIL stage, [(mean, std), ...]) at its ToTensor;
    (None, None) when the transform has another shape."""
    from torchvision.transforms import Compose, Normalize

    ts = list(getattr(preprocess, "transforms", []) or [])
    idx = next((i for i, t in enumerate(ts) if type(t).__name__ in ("ToTensor", "MaybeToTensor")), None)
    if idx is None or not all(isinstance(t, Normalize) and not t.inplace for t in ts[idx + 1:]):
        return None, None
    return Compose(ts[:idx]), [(tuple(t.mean), tuple(t.std)) for t in ts[idx + 1:]]


def _fingerprint(path: str) -> str:
    from mindsearch.io import file_fingerprint

    return file_fingerprint(path)


def _is_tag(name: str, tag: str) -> bool:
    import open_clip

    return bool(open_clip.get_pretrained_cfg(name, tag))


def _default_tag(name: str) -> str:
    import open_clip

    if name in DEFAULT_TAGS:
        return DEFAULT_TAGS[name]
    tags = open_clip.list_pretrained_tags_by_model(name)
    if not tags:
        raise MindsearchError(f"open_clip has no pretrained weights for {name}; pass --weights PATH "
                              "(or --weights random for a smoke test)")
    return tags[0]


def _download_tag(name: str, tag: str) -> str:
    import open_clip
    from open_clip.pretrained import download_pretrained

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        raise MindsearchError(f"open_clip has no pretrained tag {tag!r} for {name} (known: "
                              f"{', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'})")
    try:
        path = download_pretrained(cfg)
    except Exception as exc:
        raise MindsearchError(
            f"could not fetch the {name} '{tag}' weights from the hub ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); offline, pass "
            "--weights PATH (an open_clip .safetensors/.bin file or folder) or --weights random "
            "(meaningless embeddings, for tests)") from None
    if not path or not Path(path).is_file():
        raise MindsearchError(f"could not fetch the {name} '{tag}' weights; pass --weights PATH")
    return str(path)


# ---------------------------------------------------------------------------------------
# Parallel embedding loop
# ---------------------------------------------------------------------------------------
_END = object()


def _shards_of(source: ImageSource | Shard | Iterable[Shard]) -> list[Shard]:
    if isinstance(source, ImageSource):
        return source.shards()
    if isinstance(source, Shard):
        return [source]
    return list(source)


def _prepare(source: ImageSource, prepare, raw):
    """Worker: decode + prepare one raw item. Returns (record, input, None) or (raw, None, exc)."""
    try:
        rec = source.decode(raw)
        x = prepare(rec.image)
        return rec, x, None
    except MindsearchError:
        raise
    except Exception as exc:
        return raw, None, exc


def _events(shards: list[Shard], encoder: ImageEncoder, batch_size: int, num_workers: int,
            progress: bool, prefetch: int):
    """Yield ("batch", shard, records, embeddings) and ("end", shard) in order.

    A reader thread walks the shards' raw items in order and submits decode + resize/crop jobs
    (``encoder.prepare``: PIL only, which releases the GIL) to a thread pool; the futures go
    through a bounded queue, so order is kept and at most ``prefetch`` images are in flight.
    The calling thread collates batches (float conversion + normalisation) and runs the
    forward pass while the pool prepares the next ones.
    """
    total = None
    if all(s.size is not None for s in shards):
        total = int(sum(s.size for s in shards))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", desc="embedding", file=sys.stderr, dynamic_ncols=True,
                   smoothing=0.1)
    pool = ThreadPoolExecutor(max_workers=max(1, num_workers), thread_name_prefix="mindsearch-img")
    q: queue.Queue = queue.Queue(maxsize=max(prefetch, batch_size))
    stop = threading.Event()
    prepare = encoder.prepare

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader():
        try:
            for shard in shards:
                src = shard.source
                for raw in shard.raw_items():
                    if not put(("item", shard, pool.submit(_prepare, src, prepare, raw))):
                        return
                if not put(("end", shard, None)):
                    return
        except BaseException as exc:  # surfaced in the consumer
            put(("error", None, exc))
            return
        put((_END, None, None))

    t = threading.Thread(target=reader, name="mindsearch-img-reader", daemon=True)
    t.start()
    try:
        recs: list[ImageRecord] = []
        xs: list = []
        cur: Shard | None = None

        def flush():
            emb = encoder.encode(encoder.collate(xs))
            out = ("batch", cur, list(recs), emb)
            if bar is not None:
                bar.update(len(recs))
            recs.clear()
            xs.clear()
            return out

        while True:
            kind, shard, payload = q.get()
            if kind is _END:
                break
            if kind == "error":
                raise payload
            if kind == "end":
                if recs:
                    yield flush()
                yield ("end", shard)
                continue
            cur = shard
            rec, x, exc = payload.result()
            if exc is not None:
                shard.source.report(rec.key, rec.path, exc)  # raises when strict
                if bar is not None:
                    bar.update(1)
                continue
            recs.append(rec)
            xs.append(x)
            if len(recs) >= batch_size:
                yield flush()
    finally:
        stop.set()
        while True:  # unblock and drain the reader
            try:
                item = q.get_nowait()
            except queue.Empty:
                if not t.is_alive():
                    break
                t.join(timeout=0.05)
                continue
            if item[0] == "item":
                item[2].cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def embed_images(source: ImageSource | Shard | Iterable[Shard], encoder: ImageEncoder,
                 batch_size: int = 32, num_workers: int | None = None, progress: bool = True,
                 prefetch: int | None = None) -> Iterator[tuple[list[ImageRecord], np.ndarray]]:
    """Embed every image of ``source`` (a source, a shard, or a list of shards -- e.g. the
    shards a resumed build has not finished): yields ``(records, embeddings)`` in source order,
    ``embeddings`` float32 (len(records), tokens, dim). Batches never span shards (each record
    carries its ``shard_id``). Unreadable images are reported and skipped (see
    ``mindsearch.image_sources``); a strict source raises instead. ``num_workers`` decode
    threads (default min(4, cores)) run alongside the forward pass; a tqdm bar on stderr shows
    images/s."""
    if batch_size < 1:
        raise MindsearchError(f"batch_size must be >= 1 (got {batch_size})")
    nw = _default_workers() if num_workers is None else int(num_workers)
    pf = prefetch if prefetch is not None else 2 * batch_size
    for ev in _events(_shards_of(source), encoder, batch_size, nw, progress, pf):
        if ev[0] == "batch":
            yield ev[2], ev[3]


def embed_shards(source: ImageSource | Shard | Iterable[Shard], encoder: ImageEncoder,
                 batch_size: int = 32, num_workers: int | None = None, progress: bool = True,
                 prefetch: int | None = None) -> Iterator[tuple[Shard, list[ImageRecord], np.ndarray]]:
    """Like :func:`embed_images` but one item per finished shard: ``(shard, records,
    embeddings)``, also for a shard whose images were all skipped (``embeddings`` then has
    0 rows), so a resumable build can mark each shard done."""
    if batch_size < 1:
        raise MindsearchError(f"batch_size must be >= 1 (got {batch_size})")
    nw = _default_workers() if num_workers is None else int(num_workers)
    pf = prefetch if prefetch is not None else 2 * batch_size
    recs: list[ImageRecord] = []
    embs: list[np.ndarray] = []
    for ev in _events(_shards_of(source), encoder, batch_size, nw, progress, pf):
        if ev[0] == "batch":
            recs.extend(ev[2])
            embs.append(ev[3])
        else:
            e = (np.concatenate(embs) if embs
                 else np.zeros((0, encoder.tokens, encoder.dim), np.float32))
            yield ev[1], recs, e
            recs, embs = [], []


__all__ = ["ImageEncoder", "embed_images", "embed_shards", "OUTPUTS", "POOLING"]
