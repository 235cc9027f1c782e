"""A dataset's target embeddings from its own images: ``mindsearch data targets``.

Encodes every image the dataset's trials show with an open_clip image tower
(:class:`mindsearch.image_encoders.ImageEncoder`, one of its three outputs) and writes the
target set the data layer reads: ``DIR/targets/{name}.npy`` (n, tokens, dim) float16,
``{name}_ids.npy`` (image ids, ascending) and ``{name}.json`` (the embedding space record).
Works for every layout with images (``ds.images``), so a fresh ``prepare-nsd`` output or
Brain-Diffuser's stimuli arrays become trainable without another tool.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mindsearch.errors import MindsearchError

NAME_OK = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."


def embed_targets(data, name: str, *, model: str = "ViT-L-14", output: str = "final", weights=None,
                  device: str = "cpu", precision: str = "fp32", batch_size: int = 32, log=None) -> dict:
    from mindsearch.data import open_dataset
    from mindsearch.image_encoders import ImageEncoder
    from mindsearch.io import atomic_path, write_json

    say = log or (lambda msg: None)
    if not name or set(name) - set(NAME_OK) or name.startswith(".") or name.endswith("_ids"):
        raise MindsearchError(f"target set name {name!r} must be letters, digits, _ - . (not ending in _ids)")
    with open_dataset(data) as ds:
        if not ds.has_images:
            raise MindsearchError("the dataset has no images to embed (prepare-nsd --images 224, or the "
                                  "Brain-Diffuser nsd_*_stim_subN.npy arrays)", data)
        ids = np.unique(ds.trials["image_id"].to_numpy(np.int64))
        root = Path(ds.root)
        encoder = ImageEncoder.create(model, output, weights, device=device, precision=precision)
        say(f"embedding {len(ids)} images with {encoder!r}")
        out = root / "targets" / f"{name}.npy"
        from tqdm import tqdm

        with atomic_path(out) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                            shape=(len(ids), encoder.tokens, encoder.dim))
            with tqdm(total=len(ids), unit="image", desc=f"targets {name}", disable=None) as bar:
                for lo in range(0, len(ids), batch_size):
                    chunk = ids[lo:lo + batch_size]
                    arr[lo:lo + len(chunk)] = encoder.encode(encoder.collate(
                        [encoder.prepare(_pil(px)) for px in ds.images(chunk)])).astype(np.float16)
                    bar.update(len(chunk))
            arr.flush()
            del arr
        with atomic_path(root / "targets" / f"{name}_ids.npy") as tmp:
            np.save(tmp, ids, allow_pickle=False)
        space = encoder.space
        write_json(root / "targets" / f"{name}.json", space)
    return {"name": name, "file": str(out), "images": int(len(ids)), "space": space}


def _pil(chw: np.ndarray):
    """(3, H, W) in [0, 1] -> the 8-bit RGB picture it came from."""
    from PIL import Image

    return Image.fromarray(np.clip(np.rint(chw.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8), "RGB")
