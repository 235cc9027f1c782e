"""``ReconstructionPipeline``: brain samples in, images out (MindEye1's procedure, diffusers' style).

Steps, for every trial (``__call__``):

1. **brain**: the run encodes the voxels: the disjointed embedding (the best-of-N reference),
   N aligned samples from the prior (the conditioning; a run without a prior conditions on its
   disjointed tokens), and the low-level head's VAE latents.
2. **low-level**: the run's VAE decodes the latents to the blurry image.
3. **retrieval** (with an index): the nearest indexed images of the disjointed embedding.
4. **high-level**: N candidates: Versatile Diffusion's image UNet, img2img from the init image
   (blurry, the top retrieved image, or pure noise), UniPC, classifier-free guidance.
5. **best-of-N**: the ranking scores every candidate (generated and retrieved alike) against
   the brain's disjointed embedding; the best is the reconstruction. Never the ground truth.

``mode="retrieve"`` skips step 4: the top retrieved image is the reconstruction (MindEye1's LAION
path, on a local index). Build one with :meth:`ReconstructionPipeline.from_run`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from mindsearch.vae import BLUR

from mindsearch.errors import MindsearchError

INITS = ("blurry", "retrieved", "none")
MODES = ("generate", "retrieve")


@dataclass
class ReconstructionSettings:
    samples: int = 16  # candidates generated per trial (MindEye1: 16)
    steps: int = 20  # UniPC steps before strength (MindEye1: 20)
    strength: float = 0.85  # img2img strength: 17 of 20 steps run (the paper's "0.15")
    guidance: float = 3.5  # classifier-free guidance (MindEye1 with VD: 3.5)
    seed: int = 0
    init: str = "blurry"  # blurry | retrieved | none
    mode: str = "generate"  # generate | retrieve
    init_normalization: str = "vae"  # "clip" reproduces MindEye1's quirk (ANCHORS 5.5)
    retrieved_candidates: int = 1  # top retrieved images that join best-of-N (with an index)
    batch: int = 16  # candidates per UNet batch
    blur: float = BLUR  # low-pass of the blurry image, sigma as a share of its width

    def check(self) -> "ReconstructionSettings":
        from mindsearch.reconstruct.diffusion import INIT_NORMALIZATIONS

        if self.init not in INITS:
            raise MindsearchError(f"--init must be one of {', '.join(INITS)} (got {self.init!r})")
        if self.mode not in MODES:
            raise MindsearchError(f"--mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        if self.init_normalization not in INIT_NORMALIZATIONS:
            raise MindsearchError(f"init normalisation must be one of {', '.join(INIT_NORMALIZATIONS)}")
        for name in ("samples", "steps", "batch"):
            if int(getattr(self, name)) < 1:
                raise MindsearchError(f"--{name} must be at least 1 (got {getattr(self, name)})")
        if not 0.0 <= float(self.strength) <= 1.0:
            raise MindsearchError(f"--strength must be in [0, 1] (got {self.strength})")
        if float(self.guidance) < 0:
            raise MindsearchError(f"--guidance must be >= 0 (got {self.guidance})")
        if float(self.blur) < 0:
            raise MindsearchError(f"--blur must be >= 0 (got {self.blur})")
        if int(self.retrieved_candidates) < 0:
            raise MindsearchError("retrieved candidates must be >= 0")
        return self


@dataclass
class Candidate:
    image: np.ndarray  # (3, H, W) float32 in [0, 1]
    source: str  # "generated" | "retrieved"
    score: float | None = None
    image_id: int | None = None  # retrieved: the index's id
    index_score: float | None = None  # retrieved: the index's cosine with the brain embedding

    def record(self) -> dict:
        out = {"source": self.source, "score": self.score}
        if self.source == "retrieved":
            out.update(image_id=self.image_id, index_score=self.index_score)
        return out


@dataclass
class TrialReconstruction:
    row: int
    seed: int
    candidates: list[Candidate]
    chosen: int
    blurry: np.ndarray | None = None
    init: str | None = None  # what img2img started from
    retrieved: list = field(default_factory=list)  # engine Hits, best first
    top_retrieved: np.ndarray | None = None  # the first hit's pixels

    @property
    def image(self) -> np.ndarray:
        return self.candidates[self.chosen].image


@dataclass
class ReconstructionOutput:
    trials: list[TrialReconstruction]
    settings: dict
    ranking: dict
    conditioning: str
    components: str | None
    lowlevel_vae: str | None
    index: str | None
    seconds: float
    generated: int
    images_per_second: float | None


def _place_run_encoder(run, device: str) -> None:
    """Move a loaded MindEye-style encoder to ``device`` (runs load on the CPU)."""
    enc = run.encoder()
    if hasattr(enc, "model") and hasattr(enc, "device") and str(enc.device) != str(device):
        enc.model.to(device)
        enc.device = device


class ReconstructionPipeline:
    def __init__(self, run, *, components=None, lowlevel_vae=None, ranking=None, retriever=None,
                 device: str = "cpu"):
        self.run, self.components, self.lowlevel_vae = run, components, lowlevel_vae
        self.ranking, self.retriever, self.device = ranking, retriever, device

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_run(cls, run, *, vd=None, vae=None, ranking: str = "auto", clip=None, data=None, index=None,
                 root=None, images=None, settings: ReconstructionSettings | None = None,
                 device: str = "cpu", dtype: str = "fp32", progress=None) -> "ReconstructionPipeline":
        """Everything a run needs, from the CLI's words (see ``mindsearch reconstruct --help``)."""
        from mindsearch.reconstruct.components import check_conditioning_space, load_components
        from mindsearch.reconstruct.ranking import choose_ranking
        from mindsearch.runs import Run, open_run

        settings = (settings or ReconstructionSettings()).check()
        say = progress or (lambda m: None)
        run = run if isinstance(run, Run) else open_run(run)
        space = run.space
        if not space:
            raise MindsearchError("the run records no embedding space", run.path)
        retriever = None
        if index is not None:
            from mindsearch.engine import Engine
            from mindsearch.reconstruct.retrieval import Retriever

            retriever = Retriever(Engine(root), index, images=images)
        if settings.mode == "retrieve" or settings.init == "retrieved":
            if retriever is None:
                what = "--mode retrieve" if settings.mode == "retrieve" else "--init retrieved"
                raise MindsearchError(f"{what} needs --index NAME (and --root DIR)")
        components = None
        if settings.mode == "generate":
            components = load_components(vd, tokens=int(space["tokens"]), dim=int(space["dim"]), device=device,
                                         dtype=dtype)
            check_conditioning_space(space, components, run.path.name)
            say(f"high-level stage: {components.describe()}")
        low = cls._lowlevel_vae(run, vae, device, needed=settings.init == "blurry" and settings.mode == "generate")
        rank = None
        if settings.mode == "generate" and settings.samples + (settings.retrieved_candidates if retriever else 0) > 1:
            rank = choose_ranking(ranking, space=space, ds=data, subject=run.subject, clip=clip,
                                  have_blurry=low is not None, device=device, progress=say)
            say(f"best-of-N ranking: {rank.name} ({rank.description})"
                + (f" [substitute: {rank.reason}]" if rank.reason else ""))
        return cls(run, components=components, lowlevel_vae=low, ranking=rank, retriever=retriever, device=device)

    @staticmethod
    def _lowlevel_vae(run, vae, device, needed: bool):
        """The run's VAE: ``vae`` (a path, "random-tiny"), else the one the run was trained with."""
        from mindsearch.vae import ImageAutoencoder

        record = run.config.get("lowlevel_vae")
        if record is None:
            if needed:
                raise MindsearchError("--init blurry needs a run with a low-level head (train with --vae); "
                                      "use --init none or --init retrieved", run.path)
            return None
        if vae is None:
            source = str(record.get("source") or "")
            parts = source.split("|")
            vae = tuple(parts) if len(parts) == 2 else source
            from pathlib import Path

            if not all(Path(p).exists() for p in (vae if isinstance(vae, tuple) else (vae,))):
                if not needed:
                    return None
                raise MindsearchError(f"the run's VAE {source} is not here; pass --vae DIR", run.path)
        if isinstance(vae, ImageAutoencoder):
            return vae
        if str(vae) == "random-tiny":
            import tempfile

            from mindsearch.reconstruct.components import save_random_tiny_vae

            with tempfile.TemporaryDirectory() as tmp:
                loaded = ImageAutoencoder.load(save_random_tiny_vae(f"{tmp}/vae"), device=device)
            loaded.source = "random-tiny"
            return loaded
        return ImageAutoencoder.load(vae, device=device)

    # ------------------------------------------------------------------ the steps
    def __call__(self, voxels, *, subject: int | None = None, session=None, zscore: bool = True,
                 settings: ReconstructionSettings | None = None, progress: bool = True,
                 source="<voxels>") -> ReconstructionOutput:
        """Every trial's reconstruction in memory (a few trials; ``iter_trials`` streams many)."""
        stats: dict = {}
        trials = list(self.iter_trials(voxels, subject=subject, session=session, zscore=zscore,
                                       settings=settings, progress=progress, source=source, stats=stats))
        return self.describe_output(trials, stats)

    def describe_output(self, trials: list, stats: dict) -> ReconstructionOutput:
        settings = stats["settings"]
        generate = settings.mode == "generate"
        return ReconstructionOutput(
            trials=trials, settings=asdict(settings),
            ranking=(self.ranking.as_dict() if self.ranking is not None else
                     {"name": "index" if not generate else "none",
                      "description": "the index's cosine with the brain's disjointed embedding" if not generate
                      else "a single candidate: nothing to rank"}),
            conditioning=stats.get("conditioning") or "none (retrieval only)",
            components=None if self.components is None else self.components.describe(),
            lowlevel_vae=None if self.lowlevel_vae is None else f"{self.lowlevel_vae.kind} {self.lowlevel_vae.source}",
            index=None if self.retriever is None else self.retriever.index,
            seconds=stats["seconds"], generated=stats["generated"],
            images_per_second=(stats["generated"] / stats["gen_seconds"]) if stats["gen_seconds"] > 0 else None)

    def iter_trials(self, voxels, *, subject: int | None = None, session=None, zscore: bool = True,
                    settings: ReconstructionSettings | None = None, progress: bool = True,
                    source="<voxels>", stats: dict | None = None):
        """Yield one ``TrialReconstruction`` per row of ``voxels``, trial by trial, so memory stays
        at one trial's images (1,000 test images x 16 candidates at 512 px would be ~50 GB).
        ``stats`` (a dict) receives the run-wide figures as they accrue."""
        settings = (settings or ReconstructionSettings()).check()
        from tqdm.auto import tqdm

        run = self.run
        voxels = np.asarray(voxels, np.float32)
        if voxels.ndim == 1:
            voxels = voxels[None]
        subject = run.check_voxels(voxels, subject, source)
        _place_run_encoder(run, self.device)
        enc = run.encoder()
        stats = {} if stats is None else stats
        stats.update(settings=settings, generated=0, gen_seconds=0.0, seconds=0.0, conditioning=None)
        t0 = time.perf_counter()
        generate = settings.mode == "generate"
        n = len(voxels)
        sessions = None if session is None else np.broadcast_to(np.asarray(session), (n,))

        # 1a. the disjointed embeddings (the best-of-N reference) and 3. retrieval, for all trials at once
        kw = dict(subject=subject, zscore=zscore)
        disjointed = run.encode(voxels, outputs=("disjointed",), session=sessions, **kw)["disjointed"]
        hits = [[] for _ in range(n)]
        if self.retriever is not None:
            k = settings.samples if not generate else max(1, settings.retrieved_candidates)
            hits = self.retriever.search(disjointed, run, k=k)

        bar = tqdm(total=n, desc="trials", unit="trial", file=sys.stderr, disable=not progress)
        for i in range(n):
            seed = int(settings.seed) + i
            one = voxels[i:i + 1]
            sess = None if sessions is None else sessions[i:i + 1]
            # 2. low-level stage
            blurry = None
            if self.lowlevel_vae is not None:
                from mindsearch.vae import blurry_images

                blurry = blurry_images(run, one, self.lowlevel_vae, session=sess, device=self.device,
                                       blur=settings.blur, **kw)[0]
            retrieved = [Candidate(self.retriever.pixels(h), "retrieved", image_id=h.id, index_score=h.score)
                         for h in hits[i]] if self.retriever is not None else []
            if not generate:
                for c in retrieved:
                    c.score = c.index_score
                yield TrialReconstruction(i, seed, retrieved, 0, blurry=blurry, retrieved=hits[i],
                                          top_retrieved=_first_image(retrieved))
                bar.update(1)
                continue
            # 1b. the conditioning: one prior sample per candidate (the prior follows the trial's seed)
            if hasattr(enc, "seed"):
                enc.seed = seed
            reps = np.repeat(one, settings.samples, axis=0)
            out = run.encode(reps, outputs=("aligned",), session=None if sess is None else np.repeat(sess, settings.samples), **kw)
            if "aligned" in out:
                conditioning, stats["conditioning"] = out["aligned"], "aligned: one prior sample per candidate"
            else:
                conditioning = np.repeat(disjointed[i:i + 1], settings.samples, axis=0)
                stats["conditioning"] = "disjointed: the run has no prior, every candidate shares it"
            # 4. high-level stage
            init_img = blurry if settings.init == "blurry" else (
                retrieved[0].image if settings.init == "retrieved" else None)
            tg = time.perf_counter()
            images = self._generate(conditioning, init_img, settings, seed, progress, i)
            stats["gen_seconds"] += time.perf_counter() - tg
            stats["generated"] += len(images)
            # 5. best-of-N
            cands = [Candidate(im, "generated") for im in images] + retrieved[:settings.retrieved_candidates]
            chosen = 0
            if self.ranking is not None:
                from mindsearch.reconstruct.ranking import best_of

                scores = np.concatenate([self.ranking.score(np.stack(group), disjointed[i], blurry)
                                         for group in _same_size_groups(cands)])
                for c, sc in zip(_grouped_order(cands), scores):
                    c.score = float(sc)
                chosen = best_of([c.score for c in cands])
            stats["seconds"] = time.perf_counter() - t0
            yield TrialReconstruction(i, seed, cands, chosen, blurry=blurry, init=settings.init,
                                      retrieved=hits[i], top_retrieved=_first_image(retrieved))
            bar.update(1)
        bar.close()
        stats["seconds"] = time.perf_counter() - t0

    def _generate(self, conditioning, init_img, settings, seed, progress, row) -> list[np.ndarray]:
        import torch
        from tqdm.auto import tqdm

        from mindsearch.reconstruct.diffusion import generate, normalize_conditioning
        from mindsearch.vae import resize_images

        comp = self.components
        gen = torch.Generator(device=comp.device).manual_seed(seed)
        cond = normalize_conditioning(conditioning)
        init = None
        if init_img is not None:
            init = resize_images(np.asarray(init_img, np.float32)[None], comp.image_size)
        out = []
        bar = tqdm(total=settings.samples, desc=f"trial {row} candidates", unit="img", file=sys.stderr,
                   leave=False, disable=not progress)
        for a in range(0, settings.samples, settings.batch):
            b = min(a + settings.batch, settings.samples)
            batch_init = None if init is None else np.repeat(init, b - a, axis=0)
            imgs = generate(comp, cond[a:b], init_images=batch_init, steps=settings.steps,
                            strength=settings.strength, guidance=settings.guidance, generator=gen,
                            init_normalization=settings.init_normalization)
            out.extend(list(imgs))
            bar.update(b - a)
        bar.close()
        return out


def _same_size_groups(cands):
    """Candidates grouped by image shape (generated and retrieved images differ), in a stable order."""
    shapes = []
    for c in cands:
        if c.image.shape not in shapes:
            shapes.append(c.image.shape)
    return [[c.image for c in cands if c.image.shape == s] for s in shapes]


def _grouped_order(cands):
    shapes = []
    for c in cands:
        if c.image.shape not in shapes:
            shapes.append(c.image.shape)
    return [c for s in shapes for c in cands if c.image.shape == s]


def _first_image(candidates):
    return candidates[0].image if candidates else None
