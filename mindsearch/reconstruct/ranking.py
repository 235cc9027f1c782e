"""Best-of-N: which candidate image is kept.

MindEye1 keeps the candidate whose CLIP embedding (257 x 768, flattened, unit norm) has the highest
cosine with the brain's disjointed (projector) embedding: never the ground truth. Each ranking
here embeds images into the run's space (flattened) and scores them against that reference:

``clip``         the run's own image encoder (open_clip, rebuilt from the run's space record;
                 its weights must match the space's fingerprint): MindEye1's choice.
``pixel-ridge``  a substitute for spaces without an image encoder (the simulator's targets are
                 not computed from pixels): a ridge map from 16 x 16 pixels to the target space,
                 fitted on the dataset's training images (``fit_pixel_ridge``).
``blurry``       a substitute when nothing maps pixels to the space: agreement (pixel
                 correlation at 32 px) with the trial's blurry reconstruction.

Every output records which ranking chose, and why when it is a substitute.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mindsearch.errors import MindsearchError

RANKINGS = ("auto", "clip", "pixel-ridge", "blurry")
PIXEL_SIZE = 16


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def best_of(scores) -> int:
    """Index of the highest score (NaN never wins), as MindEye1's ``np.nanargmax``."""
    scores = np.asarray(scores, np.float64)
    if not len(scores) or np.isnan(scores).all():
        raise ValueError("no finite candidate score")
    return int(np.nanargmax(scores))


def resize(images: np.ndarray, size: int) -> np.ndarray:
    from mindsearch.vae import resize_images

    return resize_images(np.asarray(images, np.float32), size)


@dataclass
class Ranking:
    """Scores candidates against the brain's embedding (higher is better)."""

    name: str
    description: str
    reason: str = ""  # why a substitute was used
    info: dict = field(default_factory=dict)

    def embed(self, images: np.ndarray) -> np.ndarray:  # (n, 3, H, W) in [0, 1] -> (n, F)
        raise NotImplementedError

    def score(self, images: np.ndarray, brain: np.ndarray, blurry: np.ndarray | None = None) -> np.ndarray:
        """Cosine of each image's embedding with the brain embedding (any shape, flattened)."""
        emb = unit_rows(self.embed(images))
        ref = unit_rows(np.asarray(brain)[None])[0]
        if emb.shape[1] != ref.shape[0]:
            raise MindsearchError(f"ranking {self.name}: image embeddings have {emb.shape[1]} values, "
                                  f"the brain embedding {ref.shape[0]}")
        return emb @ ref

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "reason": self.reason or None,
                **self.info}


class ClipRanking(Ranking):
    def __init__(self, encoder):
        super().__init__("clip", f"cosine of the candidate's {encoder.model_name}/{encoder.output} embedding "
                                 "with the brain's disjointed embedding (MindEye1)")
        self.encoder = encoder
        self.info = {"space": encoder.space}

    def embed(self, images):
        from PIL import Image

        pics = [Image.fromarray(to_uint8(im)) for im in images]
        batch = self.encoder.collate([self.encoder.prepare(p) for p in pics])
        return self.encoder.encode(batch).reshape(len(images), -1)


class PixelRidgeRanking(Ranking):
    def __init__(self, coef: np.ndarray, intercept: np.ndarray, info: dict):
        super().__init__("pixel-ridge", "cosine of a ridge map from 16x16 pixels to the run's space "
                                        "(fitted on the dataset's training images) with the brain's "
                                        "disjointed embedding", info=info)
        self.coef, self.intercept = coef, intercept

    def embed(self, images):
        x = resize(images, PIXEL_SIZE).reshape(len(images), -1)
        return x @ self.coef + self.intercept


class BlurryRanking(Ranking):
    def __init__(self, reason: str = ""):
        super().__init__("blurry", "pixel correlation (32 px) with the trial's blurry reconstruction",
                         reason=reason)

    def score(self, images, brain, blurry=None):
        if blurry is None:
            raise MindsearchError("the blurry ranking needs the low-level stage (a run with a low-level head)")
        a = resize(images, 32).reshape(len(images), -1)
        b = resize(np.asarray(blurry)[None], 32).reshape(1, -1)
        a = a - a.mean(1, keepdims=True)
        b = b - b.mean(1, keepdims=True)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b) + 1e-12
        return (a @ b[0]) / den


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return (np.clip(np.asarray(image, np.float32).transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)


def fit_pixel_ridge(ds, subject: int, *, max_images: int = 4000, seed: int = 0) -> PixelRidgeRanking:
    """Ridge from 16 x 16 x 3 pixels to the flattened targets of ``subject``'s training images
    (alpha by leave-one-out, sklearn's ``RidgeCV``); held-out top-1 among 100 is recorded."""
    from sklearn.linear_model import RidgeCV

    if not (ds.has_images and ds.has_targets):
        raise MindsearchError("the pixel-ridge ranking needs a dataset with images and targets", ds.root)
    table = ds.trials[(ds.trials["subject"] == subject) & (ds.trials["split"] == "train")]
    ids = np.unique(table["image_id"].to_numpy(np.int64))
    rng = np.random.default_rng(seed)
    if len(ids) > max_images:
        ids = np.sort(rng.choice(ids, max_images, replace=False))
    if len(ids) < 20:
        raise MindsearchError(f"only {len(ids)} training images to fit the pixel-ridge ranking", ds.root)
    x = np.concatenate([resize(ds.images(ids[i:i + 256]), PIXEL_SIZE).reshape(-1, 3 * PIXEL_SIZE ** 2)
                        for i in range(0, len(ids), 256)])
    y = ds.targets(ids).reshape(len(ids), -1).astype(np.float32)
    perm = rng.permutation(len(ids))
    held = perm[:min(100, len(ids) // 5)]
    fit = np.setdiff1d(np.arange(len(ids)), held)
    model = RidgeCV(alphas=np.logspace(-2, 4, 7)).fit(x[fit], y[fit])
    pred = unit_rows(model.predict(x[held]))
    top1 = float(np.mean(np.argmax(pred @ unit_rows(y[held]).T, axis=1) == np.arange(len(held))))
    model = RidgeCV(alphas=[model.alpha_]).fit(x, y)
    info = {"alpha": float(model.alpha_), "train_images": int(len(ids)),
            "heldout_top1": top1, "heldout_pool": int(len(held))}
    return PixelRidgeRanking(model.coef_.T.astype(np.float32), model.intercept_.astype(np.float32), info)


def clip_encoder_for(space: dict, weights=None, device: str = "cpu"):
    """The open_clip encoder of ``space``; ``weights``: a path (checked against the space's
    fingerprint) or None when the space's weights are ``random:SEED``. Returns (encoder, reason)."""
    from mindsearch.image_encoders import OUTPUTS

    model, layer, recorded = space.get("model"), space.get("layer"), str(space.get("weights"))
    if layer not in OUTPUTS or not model or model == "sim-v1":
        return None, f"the run's space {space.get('name') or model} has no image encoder"
    if weights is None and not recorded.startswith("random"):
        return None, f"no weights given for the run's image encoder {model} (pass --clip PATH)"
    from mindsearch.image_encoders import ImageEncoder
    from mindsearch.space import check_same_space

    try:
        enc = ImageEncoder.create(model, output=layer, weights=weights or recorded, device=device)
    except MindsearchError as exc:
        if weights is not None:
            raise
        return None, f"cannot build the run's image encoder ({exc})"
    check_same_space(enc.space, space, "the ranking encoder", "the run")
    return enc, ""


def choose_ranking(kind: str, *, space: dict, ds=None, subject: int = 1, clip=None, have_blurry: bool,
                   device: str = "cpu", progress=None) -> Ranking:
    """``auto``: clip when the run's image encoder is available, else pixel-ridge when the dataset
    has training images and targets in the run's space, else blurry."""
    say = progress or (lambda m: None)
    if kind not in RANKINGS:
        raise MindsearchError(f"unknown ranking {kind!r} (choose from {', '.join(RANKINGS)})")
    reason = ""
    if kind in ("auto", "clip"):
        enc, reason = clip_encoder_for(space, clip, device)
        if enc is not None:
            return ClipRanking(enc)
        if kind == "clip":
            raise MindsearchError(f"--rank clip: {reason}")
    if kind in ("auto", "pixel-ridge"):
        from mindsearch.space import same_space

        usable = ds is not None and ds.has_images and ds.has_targets and same_space(ds.target_space, space)
        if usable:
            say(f"best-of-N: {reason or 'pixel-ridge requested'}; fitting the pixel-ridge substitute "
                "on the dataset's training images")
            r = fit_pixel_ridge(ds, subject)
            r.reason = reason
            return r
        if kind == "pixel-ridge":
            raise MindsearchError("--rank pixel-ridge needs --data with images and targets in the run's space")
        reason = (reason + "; " if reason else "") + "no dataset images and targets in the run's space"
    if not have_blurry:
        raise MindsearchError(f"no way to rank candidates: {reason}; and no blurry image (use --samples 1, "
                              "or give --data / --clip)")
    return BlurryRanking(reason)
