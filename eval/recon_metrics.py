"""MindEye's image metrics for reconstructions, computed as its final evaluation code does.

The protocol (MindEyeV2 ``src/final_evaluations.ipynb``; MindEye1 ``src/Reconstruction_Metrics.py``
computes the same numbers; ANCHORS.md 4.3):

0. every image, reconstruction and ground truth, is resized to 256 x 256 (bilinear) first;
1. **PixCorr**: resize to 425 (bilinear), flatten all three channels, Pearson r per pair, mean;
2. **SSIM**: resize to 425, ``skimage.color.rgb2gray``, ``structural_similarity(recon, truth,
   gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)`` per pair, mean;
3. **two-way identification** (AlexNet(2) = ``features.4``, AlexNet(5) = ``features.11`` at 256 px,
   InceptionV3 ``avgpool`` at 342 px, all with ImageNet normalisation; CLIP ``encode_image`` at the
   model's 224 px with CLIP normalisation): ``r = corrcoef(reals, preds)[:N, N:]``, and for each
   reconstruction j the share of the N-1 *other* ground truths whose correlation with it is below
   its own ground truth's (``r[:, j] < r[j, j]``), over all N (MindEye2 compares each against
   the 999 others, never subsets). Chance is 0.5;
4. **EfficientNet-B1** (``avgpool``, 255 px) and **SwAV** ResNet-50 (``avgpool``, 224 px): mean
   correlation distance ``1 - r`` (``scipy.spatial.distance.correlation``) per pair; lower is better.

Traps, handled here:
- scikit-image <= 0.19 with the code's ``multichannel=True`` on a 2-D gray image computes a
  1-D SSIM down each column; >= 0.20 ignores the keyword and computes the true 2-D SSIM (what
  MindEye1/2 pinned: 0.20.0 / 0.22.0). Brain-Diffuser pins 0.17.2, so its SSIM is the column
  version and not comparable. We compute 2-D SSIM and never pass ``multichannel``.
- torchvision's tensor ``Resize`` antialiases from 0.17 on (MindEye1's saved outputs were made
  without). Downsizing (e.g. 425 -> 256, 256 -> 224) differs; ``antialias=False`` reproduces
  the old behaviour.
- torchvision's ``inception_v3(weights=...)`` sets ``transform_input=True`` (re-maps ImageNet
  normalisation to the [-1, 1] input Google's weights expect); building it with ``weights=None``
  does not, so we set it explicitly or the features would not be MindEye's.
- A 1,000-image ``features.4`` correlation (2,000 x 184,512 values) is ~3 GB in float64 through
  ``np.corrcoef``; here the reconstructions' standardised features are kept in float32 and the
  ground truths stream past them in batches, the products accumulated in float64 over column
  chunks (peak ~ N x D x 4 bytes plus one chunk).
- Degenerate inputs (a constant image, an all-zero feature map) have no correlation; they count
  as r = 0 instead of NaN, so the JSON stays valid (MindEye's code would return NaN).

Weights: real networks only, from local files (never downloaded). Each network takes a
safetensors file or a torchvision state dict (``.pth``, read with ``torch.load(weights_only=True)``:
nothing is unpickled), given per network or found in a weights directory by file name; a network
without weights is skipped with one line saying which weights it needs. CLIP loads through
``mindsearch.image_encoders.ImageEncoder`` (open_clip; OpenAI's ViT-L/14 is ``ViT-L-14-quickgelu``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mindsearch.errors import MindsearchError

METRICS = ("pixcorr", "ssim", "alexnet2", "alexnet5", "inception", "clip", "effnet", "swav")
LOWER_IS_BETTER = frozenset({"effnet", "swav"})
LABELS = {"pixcorr": "PixCorr", "ssim": "SSIM", "alexnet2": "AlexNet(2)", "alexnet5": "AlexNet(5)",
          "inception": "Inception", "clip": "CLIP", "effnet": "EffNet-B1", "swav": "SwAV"}
TWO_WAY = frozenset({"alexnet2", "alexnet5", "inception", "clip"})  # shown as percentages
EVAL_SIZE = 256  # step 0 of the protocol
PIXEL_SIZE = 425  # PixCorr and SSIM
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".tar", ".bin")
CHUNK_VALUES = 1 << 24  # float64 values per correlation chunk (128 MB)


@dataclass(frozen=True)
class FeatureNet:
    """A metric network: which layers it scores, how images reach it, which weights it needs."""

    name: str  # the flag / weights-dict key
    nodes: dict  # metric -> graph node returned by create_feature_extractor
    size: int | None  # resize before the network (None: the CLIP model's own input size)
    norm: tuple
    needs: str  # what the skip line names
    patterns: tuple  # file-name globs looked for in a weights directory
    unused: tuple = ()  # state-dict prefixes the scored layers never reach (may be absent)
    ignored: tuple = ()  # foreign keys that published checkpoints carry (SwAV's heads)
    two_way: bool = True  # else: mean correlation distance


NETWORKS = (
    FeatureNet("alexnet", {"alexnet2": "features.4", "alexnet5": "features.11"}, 256, IMAGENET,
               "AlexNet IMAGENET1K_V1 weights (torchvision alexnet-owt-7be5be79.pth, or its features.* "
               "as safetensors)", ("alexnet*",), unused=("classifier.",)),
    FeatureNet("inception", {"inception": "avgpool"}, 342, IMAGENET,
               "InceptionV3 IMAGENET1K_V1 weights (torchvision inception_v3_google-0cc3c7bd.pth)",
               ("inception*",), unused=("fc.", "AuxLogits.")),
    FeatureNet("clip", {"clip": "final"}, None, CLIP_NORM,
               "CLIP ViT-L/14 weights (open_clip ViT-L-14-quickgelu 'openai': open_clip_pytorch_model.bin "
               "or .safetensors)", ("clip*", "ViT-L-14*", "open_clip*")),
    FeatureNet("effnet", {"effnet": "avgpool"}, 255, IMAGENET,
               "EfficientNet-B1 IMAGENET1K_V2 weights (torchvision efficientnet_b1-c27df63c.pth)",
               ("efficientnet_b1*", "effnet*"), unused=("classifier.",), two_way=False),
    FeatureNet("swav", {"swav": "avgpool"}, 224, IMAGENET,
               "SwAV ResNet-50 weights (facebookresearch/swav swav_800ep_pretrain.pth.tar)",
               ("swav*",), unused=("fc.",), ignored=("projection_head.", "prototypes."), two_way=False),
)
NETWORK_NAMES = tuple(n.name for n in NETWORKS)


def format_value(metric: str, value) -> str:
    """How tables show a metric: two-way identification in percent, the others to 3 decimals."""
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if metric in TWO_WAY else f"{value:.3f}"


# ----------------------------------------------------------------------------- pixels


def resize(images, size: int, antialias: bool = True):
    """torchvision's tensor ``Resize((size, size))``, bilinear: float torch (n, 3, H, W) -> (n, 3, size, size)."""
    import torch
    import torch.nn.functional as F

    x = images if torch.is_tensor(images) else torch.from_numpy(np.ascontiguousarray(images, np.float32))
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r in float64; a row without variance gives 0 (see module doc)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    num = (a * b).sum(1)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _pixel_scores(recons, truth, batch: int, antialias: bool) -> dict[str, np.ndarray]:
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    pix, ssim = [], []
    for i in range(0, len(recons), batch):
        r = resize(resize(recons[i:i + batch], EVAL_SIZE, antialias), PIXEL_SIZE, antialias).numpy()
        t = resize(resize(truth[i:i + batch], EVAL_SIZE, antialias), PIXEL_SIZE, antialias).numpy()
        pix.append(_pearson_rows(t, r))
        r_gray = rgb2gray(r.transpose(0, 2, 3, 1))
        t_gray = rgb2gray(t.transpose(0, 2, 3, 1))
        # 2-D SSIM on gray images; no `multichannel` (see the module doc's first trap)
        ssim.append([structural_similarity(rg, tg, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False, data_range=1.0)
                     for rg, tg in zip(r_gray, t_gray)])
    return {"pixcorr": np.concatenate(pix), "ssim": np.asarray(np.concatenate(ssim), np.float64)}


# ----------------------------------------------------------------------------- correlations


def standardise(features) -> np.ndarray:
    """Rows minus their mean, over their norm (float64 arithmetic, float32 out): dot products of
    two such rows are Pearson correlations. An all-constant row stays zero (r = 0 with anything)."""
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0).astype(np.float32)


def correlate(z_rows: np.ndarray, z_cols: np.ndarray) -> np.ndarray:
    """``z_rows @ z_cols.T`` for standardised rows, accumulated in float64 over column chunks so
    the float64 copies stay bounded (CHUNK_VALUES) however wide the features are."""
    out = np.zeros((len(z_rows), len(z_cols)), np.float64)
    width = max(1, CHUNK_VALUES // max(1, len(z_rows) + len(z_cols)))
    for c in range(0, z_rows.shape[1], width):
        out += z_rows[:, c:c + width].astype(np.float64) @ z_cols[:, c:c + width].astype(np.float64).T
    return out


def two_way_from_correlations(r: np.ndarray) -> np.ndarray:
    """MindEye's two-way identification per reconstruction from ``r[i, j] = corr(truth_i, recon_j)``:
    the share of the other N-1 ground truths less correlated with recon j than truth j is."""
    n = len(r)
    if n < 2:
        raise MindsearchError("two-way identification needs at least 2 image pairs")
    success = r < np.diag(r)[None, :]  # broadcast as in the anchors: column j against r[j, j]
    return success.sum(0) / (n - 1)


def two_way_identification(reals, preds) -> np.ndarray:
    """Per-reconstruction two-way scores for feature arrays (row i of both = pair i); mean = the metric."""
    return two_way_from_correlations(correlate(standardise(reals), standardise(preds)))


def correlation_distance(reals, preds) -> np.ndarray:
    """``scipy.spatial.distance.correlation`` per row pair (1 - Pearson r)."""
    return 1.0 - np.sum(standardise(reals).astype(np.float64) * standardise(preds), axis=1)


# ----------------------------------------------------------------------------- weights


def read_state_dict(path) -> dict:
    """A safetensors file or a torch state dict (``weights_only=True``: no unpickling), with
    ``state_dict`` wrappers and DataParallel's ``module.`` prefixes removed."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise MindsearchError("weights file not found", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors header errors, refused pickles, truncated zips
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise MindsearchError(f"cannot read weights ({type(exc).__name__}: {first})", path) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise MindsearchError("not a state dict of tensors", path)
    return {re.sub(r"^module\.", "", k): v for k, v in state.items()}


def _build(name: str):
    from torchvision import models

    if name == "alexnet":
        return models.alexnet(weights=None)
    if name == "inception":
        # what inception_v3(weights=DEFAULT) builds: transform_input=True, aux head present
        return models.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    if name == "effnet":
        return models.efficientnet_b1(weights=None)
    if name == "swav":
        return models.resnet50(weights=None)  # SwAV's hub entry point is torchvision's ResNet-50
    raise ValueError(name)


def load_network(net: FeatureNet, path, device: str = "cpu"):
    """The torchvision network with weights from ``path``, as a feature extractor of ``net.nodes``."""
    from torchvision.models.feature_extraction import create_feature_extractor

    state = read_state_dict(path)
    model = _build(net.name)
    state = {k: v for k, v in state.items() if not k.startswith(net.ignored)} if net.ignored else state
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: another architecture's weights
        first = str(exc).strip().splitlines()
        raise MindsearchError(f"weights do not fit {net.name} ({first[1].strip() if len(first) > 1 else first[0]})",
                              path) from None
    missing = [k for k in missing if not k.startswith(net.unused) and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise MindsearchError(f"not {net.needs.split(' (')[0]} ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected keys; {what})", path)
    extractor = create_feature_extractor(model.eval(), return_nodes=sorted(set(net.nodes.values())))
    return extractor.to(device).eval().requires_grad_(False)


def find_weights(net: FeatureNet, weights_dir) -> Path | None:
    """The one file (or, for CLIP, a ``clip/`` folder) for ``net`` in ``weights_dir``; None if none."""
    folder = Path(weights_dir)
    if not folder.is_dir():
        raise MindsearchError("weights directory not found", folder)
    if net.name == "clip" and (folder / "clip").is_dir():
        return folder / "clip"
    found = sorted({p for pat in net.patterns for p in folder.glob(pat)
                    if p.is_file() and p.name.lower().endswith(WEIGHT_SUFFIXES)})
    if len(found) > 1:
        safe = [p for p in found if p.suffix == ".safetensors"]
        if len(safe) == 1:
            return safe[0]
        raise MindsearchError(f"several {net.name} weight files ({', '.join(p.name for p in found)}); "
                              f"pass one explicitly", folder)
    return found[0] if found else None


def resolve_weights(weights: dict | None, weights_dir) -> tuple[dict[str, Path], dict[str, str]]:
    """-> ({network: path}, {network: why skipped}). An explicit path that does not exist is an error."""
    weights = {k: v for k, v in (weights or {}).items() if v is not None}
    unknown = sorted(set(weights) - set(NETWORK_NAMES))
    if unknown:
        raise MindsearchError(f"unknown metric network(s) {', '.join(unknown)} (known: {', '.join(NETWORK_NAMES)})")
    found, skipped = {}, {}
    for net in NETWORKS:
        if net.name in weights:
            p = Path(weights[net.name])
            if not p.exists():
                raise MindsearchError(f"{net.name} weights not found", p)
            found[net.name] = p
            continue
        p = find_weights(net, weights_dir) if weights_dir is not None else None
        if p is not None:
            found[net.name] = p
        else:
            skipped[net.name] = (f"needs {net.needs}: pass --{net.name} PATH or put {net.patterns[0]} "
                                 f"in --weights-dir")
    return found, skipped


# ----------------------------------------------------------------------------- features


def _clip_features(path, model: str, device: str):
    from mindsearch.image_encoders import ImageEncoder

    enc = ImageEncoder.create(model, output="final", weights=path, device=device)
    return (lambda x: {"final": enc.encode(x)[:, 0, :]}), int(enc.image_size[0])


def _feature_batches(fn, images, size: int, norm, batch: int, antialias: bool,
                     device: str) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(start row, {node: float32 (b, D)}) per batch: resize 256 -> ``size``, normalise, run ``fn``."""
    import torch

    mean = torch.tensor(norm[0])[None, :, None, None]
    std = torch.tensor(norm[1])[None, :, None, None]
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = resize(resize(images[i:i + batch], EVAL_SIZE, antialias), size, antialias)
            out = fn(((x - mean) / std).to(device))
            yield i, {k: (v if isinstance(v, np.ndarray) else v.float().cpu().numpy()).reshape(len(x), -1)
                      for k, v in out.items()}


def _network_scores(net: FeatureNet, fn, size: int, recons, truth, batch: int, antialias: bool,
                    device: str) -> dict[str, np.ndarray]:
    """Per-pair scores for every metric of ``net``: reconstructions' features kept (standardised,
    float32), ground truths streamed past them (the module doc's memory note)."""
    n = len(recons)
    z_pred = {}
    for i, feats in _feature_batches(fn, recons, size, net.norm, batch, antialias, device):
        for node, f in feats.items():
            if node not in z_pred:
                z_pred[node] = np.empty((n, f.shape[1]), np.float32)
            z_pred[node][i:i + len(f)] = standardise(f)
    r = {node: np.empty((n, n), np.float64) for node in z_pred}
    dist = {node: np.empty(n, np.float64) for node in z_pred}
    for i, feats in _feature_batches(fn, truth, size, net.norm, batch, antialias, device):
        for node, f in feats.items():
            z = standardise(f)
            if net.two_way:
                r[node][i:i + len(f)] = correlate(z, z_pred[node])
            else:
                dist[node][i:i + len(f)] = 1.0 - np.sum(z.astype(np.float64) * z_pred[node][i:i + len(f)], 1)
    if net.two_way:
        return {m: two_way_from_correlations(r[node]) for m, node in net.nodes.items()}
    return {m: dist[node] for m, node in net.nodes.items()}


# ----------------------------------------------------------------------------- entry point


def _check_images(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 4 or a.shape[1] != 3:
        raise MindsearchError(f"{what} must be (n, 3, H, W) RGB arrays, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise MindsearchError(f"{what} contain NaN or Inf")
    return np.asarray(a, np.float32)


def image_metrics(recons, truth, *, weights: dict | None = None, weights_dir=None, device: str = "cpu",
                  batch_size: int = 32, clip_model: str = "ViT-L-14-quickgelu", antialias: bool = True,
                  per_item: bool = False, progress: Callable[[str], None] | None = None) -> dict:
    """MindEye's eight image metrics for row-paired ``recons`` / ``truth``, float (n, 3, H, W) in [0, 1].

    ``weights``: {network: path} for ``alexnet``, ``inception``, ``clip``, ``effnet``, ``swav``;
    ``weights_dir``: a folder searched by file name for the others. Returns ``{"n", "pixcorr",
    "ssim", "alexnet2", "alexnet5", "inception", "clip", "effnet", "swav", "skipped", "weights"}``:
    floats, None for a skipped metric with the reason in ``skipped[metric]``. ``per_item=True``
    adds ``items``: {metric: float64 (n,)} (two-way: the share of others beaten, per reconstruction).
    """
    recons, truth = _check_images(recons, "reconstructions"), _check_images(truth, "ground-truth images")
    if len(recons) != len(truth):
        raise MindsearchError(f"{len(recons)} reconstructions but {len(truth)} ground-truth images: "
                              "they must pair row by row")
    if len(recons) == 0:
        raise MindsearchError("no image pairs to score")
    say = progress or (lambda msg: None)
    n = len(recons)
    found, skipped_nets = resolve_weights(weights, weights_dir)
    items: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    say(f"PixCorr, SSIM on {n} pair(s)")
    items.update(_pixel_scores(recons, truth, batch_size, antialias))
    for net in NETWORKS:
        if net.name in skipped_nets:
            for m in net.nodes:
                skipped[m] = skipped_nets[net.name]
            continue
        if net.two_way and n < 2:
            for m in net.nodes:
                skipped[m] = "two-way identification needs at least 2 image pairs"
            continue
        say(f"{net.name}: {', '.join(LABELS[m] for m in net.nodes)}")
        if net.name == "clip":
            fn, size = _clip_features(found["clip"], clip_model, device)
        else:
            fn, size = load_network(net, found[net.name], device), net.size
        items.update(_network_scores(net, fn, size, recons, truth, batch_size, antialias, device))
        del fn
    out: dict = {"n": n}
    for m in METRICS:
        out[m] = float(np.mean(items[m])) if m in items else None
    out["skipped"] = skipped
    out["weights"] = {k: str(v) for k, v in found.items()}
    if per_item:
        out["items"] = {m: np.asarray(v, np.float64) for m, v in items.items()}
    return out


# ----------------------------------------------------------------------------- pairing


RECON_MANIFEST = "manifest.json"
RECON_FORMAT = "mindsearch-reconstruct/1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class ReconPairs:
    """Reconstructions and ground truths paired row by row, at ``size`` px (protocol step 0)."""

    recons: np.ndarray
    truth: np.ndarray
    names: list[str]
    image_ids: list
    blurry: np.ndarray | None = None
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.recons)


def read_image(path, size: int | None = EVAL_SIZE) -> np.ndarray:
    """One PNG/JPEG -> float32 (3, size, size) in [0, 1] (torchvision-style bilinear resize)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise MindsearchError("image not found", path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), np.float32).transpose(2, 0, 1) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MindsearchError(f"not a readable image ({type(exc).__name__}: {str(exc)[:120]})", path) from None
    return arr if size is None else resize(arr[None], size).numpy()[0]


def _images_by_stem(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise MindsearchError(f"{what} folder not found", folder)
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in out:
                raise MindsearchError(f"two images named {p.stem!r} ({out[p.stem].name}, {p.name})", folder)
            out[p.stem] = p
    if not out:
        raise MindsearchError(f"no PNG/JPEG images in the {what} folder", folder)
    return out


def _inside(root: Path, rel, manifest: Path) -> Path:
    """A manifest's relative path, refused if it leaves the manifest's folder."""
    if not isinstance(rel, str) or not rel:
        raise MindsearchError(f"a record's image path must be a non-empty string, got {rel!r}", manifest)
    p = (root / rel).resolve()
    if Path(rel).is_absolute() or not p.is_relative_to(root.resolve()):
        raise MindsearchError(f"image path {rel!r} points outside the manifest's folder", manifest)
    return p


def read_manifest(path) -> list[dict]:
    """The records of a reconstruct manifest (docs/interfaces.md), paths resolved inside its folder."""
    from mindsearch.io import read_json

    path = Path(path)
    doc = read_json(path)
    records = doc.get("records") if isinstance(doc, dict) else None
    if not isinstance(records, list) or not records:
        raise MindsearchError("a reconstruct manifest needs a non-empty 'records' list", path)
    out = []
    for k, rec in enumerate(records):
        if not isinstance(rec, dict) or "chosen" not in rec:
            raise MindsearchError(f"record {k} has no 'chosen' image path", path)
        image_id = rec.get("image_id")
        if image_id is not None and (isinstance(image_id, bool) or not isinstance(image_id, int) or image_id < 0):
            raise MindsearchError(f"record {k}: image_id must be a non-negative integer or null", path)
        out.append({"name": str(rec.get("trial", k)), "image_id": image_id,
                    "chosen": _inside(path.parent, rec["chosen"], path),
                    "blurry": _inside(path.parent, rec["blurry"], path) if rec.get("blurry") else None})
    return out


def _stem_id(stem: str, where: Path) -> int:
    if not stem.isdigit():
        raise MindsearchError(f"image {stem!r}: pairing by image id needs file names that are ids "
                              "(e.g. 000123.png) or a reconstruct manifest", where)
    return int(stem)


def load_pairs(recons, truth=None, *, data=None, size: int = EVAL_SIZE) -> ReconPairs:
    """Pair reconstructions with their ground truths.

    ``recons``: a folder of PNG/JPEG files, or a reconstruct output folder with ``manifest.json``
    (records with ``image_id`` and ``chosen``; see docs/interfaces.md). ``truth``: a folder whose
    images pair by file stem (same stem in both folders), or by image id (``000123.png`` = id 123)
    when the reconstructions come with a manifest. ``data``: a dataset whose images are the ground
    truth, read by image id (manifest ids, or reconstruction file stems that are ids).
    Every reconstruction needs its ground truth and, for folders, every ground truth its reconstruction.
    """
    if (truth is None) == (data is None):
        raise MindsearchError("give the ground truth as a folder (--truth) or a dataset (--data), not both")
    recons = Path(recons)
    manifest = recons / RECON_MANIFEST
    source = {"recons": str(recons), "truth": str(truth if truth is not None else data)}
    if manifest.is_file():
        records = read_manifest(manifest)
        source["pairing"] = "manifest image ids"
        names = [r["name"] for r in records]
        ids = [r["image_id"] for r in records]
        if any(i is None for i in ids):
            k = ids.index(None)
            raise MindsearchError(f"record {k} has no image_id, so it has no ground truth to pair with", manifest)
        rec_paths = [r["chosen"] for r in records]
        blurry_paths = [r["blurry"] for r in records]
        if truth is not None:
            by_id = {_stem_id(s, Path(truth)): p for s, p in _images_by_stem(Path(truth), "ground-truth").items()}
            lost = [i for i in ids if i not in by_id]
            if lost:
                raise MindsearchError(f"no ground-truth image for image id {lost[0]} ({len(lost)} of {len(ids)} "
                                      "missing)", truth)
            truth_paths = [by_id[i] for i in ids]
    else:
        rec_files = _images_by_stem(recons, "reconstructions")
        names = list(rec_files)
        rec_paths = [rec_files[s] for s in names]
        blurry_paths = [None] * len(names)
        if truth is not None:
            source["pairing"] = "file stem"
            truth_files = _images_by_stem(Path(truth), "ground-truth")
            only_r = [s for s in names if s not in truth_files]
            only_t = [s for s in truth_files if s not in rec_files]
            if only_r or only_t:
                first = (f"no ground truth for {only_r[0]!r}" if only_r
                         else f"no reconstruction for {only_t[0]!r}")
                raise MindsearchError(f"{len(rec_files)} reconstructions but {len(truth_files)} ground-truth "
                                      f"images do not pair by file name ({first})", truth)
            truth_paths = [truth_files[s] for s in names]
            ids = [int(s) if s.isdigit() else None for s in names]
        else:
            source["pairing"] = "file stem = image id"
            ids = [_stem_id(s, rec_paths[k]) for k, s in enumerate(names)]
    rec = np.stack([read_image(p, size) for p in rec_paths])
    if truth is not None:
        tru = np.stack([read_image(p, size) for p in truth_paths])
    else:
        from mindsearch.data import open_dataset

        with open_dataset(data) as ds:
            if not ds.has_images:
                raise MindsearchError("the dataset has no images to use as ground truth", data)
            tru = resize(ds.images(np.asarray(ids, np.int64)), size).numpy()
    blurry = (np.stack([read_image(p, size) for p in blurry_paths])
              if all(p is not None for p in blurry_paths) else None)
    return ReconPairs(rec, np.asarray(tru, np.float32), names, ids, blurry, source)


__all__ = ["image_metrics", "load_pairs", "ReconPairs", "two_way_identification", "correlation_distance",
           "read_state_dict", "load_network", "resolve_weights", "read_manifest", "read_image", "METRICS",
           "LABELS", "LOWER_IS_BETTER", "NETWORKS", "format_value"]
