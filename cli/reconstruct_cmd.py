"""``mindsearch reconstruct``: brain samples in, images out (low-level -> VD img2img -> best-of-N)."""

from __future__ import annotations

import click

from mindsearch.cli.common import say
from mindsearch.vae import BLUR


@click.command()
@click.option("--run", "run_dir", type=click.Path(file_okay=False), required=True, help="Trained run.")
@click.option("--voxels", type=click.Path(dir_okay=False), default=None,
              help=".npy (trials, voxels) of raw betas (z-scored with the run's statistics).")
@click.option("--data", type=click.Path(), default=None, help="Dataset to take trials (and seen images) from.")
@click.option("--trials", default="test", show_default=True,
              help="With --data: 'test' (each test image once, repetitions averaged) or trial numbers N,M,...")
@click.option("--subject", type=int, default=None, help="Subject of the voxels (default: the run's).")
@click.option("--session", type=int, default=None,
              help="With --voxels: their session (z-scoring statistics; default: pooled).")
@click.option("--no-zscore", is_flag=True, help="With --voxels: they are already z-scored.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Output directory (new, empty, or a previous reconstruction: replaced).")
@click.option("--vd", default=None, help="Local Versatile Diffusion directory (image_unet/, vae/, scheduler/), "
              "or 'random-tiny' for tiny random components (meaningless images; tests and demos).")
@click.option("--vae", default=None, help="The run's low-level VAE (diffusers dir or TAESD/TAEF2 pair), or "
              "'random-tiny' (default: the one the run was trained with).")
@click.option("--samples", type=int, default=16, show_default=True, help="Candidates per trial (best-of-N).")
@click.option("--steps", type=int, default=20, show_default=True, help="UniPC steps (before strength).")
@click.option("--strength", type=float, default=0.85, show_default=True,
              help="img2img strength: 0.85 runs 17 of 20 steps (the paper's '0.15').")
@click.option("--guidance", type=float, default=3.5, show_default=True, help="Classifier-free guidance.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--blur", type=float, default=BLUR, show_default=True,
              help="Low-pass of the blurry image: Gaussian sigma as a share of its width (0: MindEye's raw decode).")
@click.option("--init", "init", type=click.Choice(["blurry", "retrieved", "none"]), default="blurry",
              show_default=True, help="img2img starting image.")
@click.option("--init-norm", type=click.Choice(["vae", "clip"]), default="vae", show_default=True,
              help="Normalisation before the VD VAE encodes the init image ('clip': MindEye1's quirk).")
@click.option("--mode", type=click.Choice(["generate", "retrieve"]), default="generate", show_default=True,
              help="'retrieve': the top retrieved image is the reconstruction.")
@click.option("--index", "index_name", default=None, help="Index for retrieval-augmented reconstruction.")
@click.option("--root", type=click.Path(file_okay=False), default=None, help="Index root.")
@click.option("--images", type=click.Path(), default=None,
              help="The folder/hdf5 a non-dataset index was built from (to read retrieved pixels).")
@click.option("--retrieved-candidates", type=int, default=1, show_default=True,
              help="Top retrieved images that compete in best-of-N (with --index).")
@click.option("--rank", "ranking", type=click.Choice(["auto", "clip", "pixel-ridge", "blurry"]), default="auto",
              show_default=True, help="Best-of-N ranking (auto: the run's CLIP encoder, else a stated substitute).")
@click.option("--clip", type=click.Path(), default=None, help="Weights of the run's open_clip image encoder.")
@click.option("--limit", type=int, default=None, help="Only the first N trials.")
@click.option("--batch", type=int, default=16, show_default=True, help="Candidates per UNet batch.")
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda | cuda:N")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Diffusion components' precision (fp16/bf16 with --device cuda; MindEye1 used fp16).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def reconstruct(run_dir, voxels, data, trials, subject, session, no_zscore, out, vd, vae, samples, steps, strength, guidance, seed,
                blur, init, init_norm, mode, index_name, root, images, retrieved_candidates, ranking, clip, limit,
                batch, device, dtype, no_progress):
    """Reconstruct seen images: low-level blurry image, Versatile Diffusion img2img, best-of-N."""
    from mindsearch.reconstruct import ReconstructionSettings
    from mindsearch.reconstruct import reconstruct as run_reconstruct

    settings = ReconstructionSettings(samples=samples, steps=steps, strength=strength, guidance=guidance,
                                      seed=seed, init=init, mode=mode, init_normalization=init_norm,
                                      retrieved_candidates=retrieved_candidates, batch=batch, blur=blur)
    _check_device(device)
    m = run_reconstruct(run_dir, out, voxels=voxels, data=data, trials=trials, subject=subject, session=session,
                        zscore=not no_zscore, vd=vd, vae=vae,
                        ranking=ranking, clip=clip, index=index_name, root=root, images=images, limit=limit,
                        settings=settings, device=device, dtype=dtype, progress=say, show_progress=not no_progress)
    s = m["summary"]
    if m.get("random_components"):
        say("note: RANDOM tiny diffusion components (--vd random-tiny): the images are meaningless")
    rate = f"{s['images_per_second']:.2f} images/s" if s.get("images_per_second") else "no images generated"
    gpu = f", GPU peak {s['peak_gpu_mib']:.0f} MiB" if s.get("peak_gpu_mib") else ""
    click.echo(f"{s['trials']} trial(s) -> {out}/chosen ({s['generated']} candidates generated, ranking "
               f"{m['ranking']['name']}); {s['seconds']:.1f}s, {rate}, peak memory {s['peak_rss_mib']:.0f} MiB{gpu}")
    click.echo(f"manifest: {out}/manifest.json   page: {out}/index.html")


def _check_device(device: str) -> None:
    from mindsearch.errors import MindsearchError

    if device != "cpu" and not device.startswith("cuda"):
        raise MindsearchError(f"--device must be cpu or cuda[:N] (got {device!r})")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise MindsearchError(f"--device {device}: no CUDA device is available here")
