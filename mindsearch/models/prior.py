"""MindEye's diffusion prior: backbone tokens -> "aligned" CLIP image tokens.

A DALL-E 2 style prior modified as in MindEye (paper Appendix A.2.1): the transformer reads
``[brain tokens, one timestep token, noised target tokens + learned positions]`` with
bidirectional attention and the last ``tokens`` outputs *are* the predicted clean targets
(``predict_x_start``; no learned queries). 100 timesteps, cosine noise schedule, MSE loss, and
20 % of the time the brain tokens are swapped for a learned null embedding so that
classifier-free guidance (``cond_scale``) is available at sampling time.

Differences from the dalle2-pytorch network the papers used, and why: positions are learned
absolute embeddings on *both* the brain and target tokens (dalle2 gives every token rotary
embeddings and a relative-position bias; without them the brain tokens would be a bag), and the
blocks are plain pre-norm attention + GELU feed-forward.

Sampling is the DDPM posterior ``q(x_{t-1} | x_t, x0_hat)``. With ``steps < timesteps`` the
chain is re-spaced (Nichol & Dhariwal 2021): the same posterior on a subset of the schedule,
which is what MindEye2's 20-of-100 sampling (dalle2 DDIM with eta=1) amounts to. The subset is
``sampler="strided"`` (evenly spaced, ending at t = 0) or ``"mindeye2"``: dalle2's grid
``int(linspace(-1, T, steps + 1))``, i.e. t = 94, 89, ..., 4 for 20 of 100, each step using the
next grid point's alpha-bar and the last one returning its x0 prediction.

``image_cond_drop_prob`` (dalle2's name): that share of training rows, and the unconditional
branch of guided sampling, see a learned null embedding in place of the noised target.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SAMPLERS = ("strided", "mindeye2")


def cosine_alphas_cumprod(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """alpha_bar_t for t = 0..T-1 (Nichol & Dhariwal), with betas clipped at 0.999 as dalle2 does."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    ac = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    ac = ac / ac[0]
    betas = (1 - ac[1:] / ac[:-1]).clamp(0, 0.999)
    return torch.cumprod(1 - betas, dim=0)


class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / max(half - 1, 1))
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([args.sin(), args.cos()], dim=-1)
        return F.pad(emb, (0, self.dim - emb.shape[-1]))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).reshape(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # bidirectional: no mask
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim * ff_mult), nn.GELU(), nn.Linear(dim * ff_mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class PriorNetwork(nn.Module):
    """Predicts clean target tokens from (noised targets, timestep, brain tokens)."""

    def __init__(self, tokens: int, dim: int, depth: int, heads: int, dim_head: int, ff_mult: int = 4,
                 null_target: bool = False):
        super().__init__()
        self.tokens = tokens
        self.null_brain = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        # Only built when targets are ever dropped, so runs saved without it load unchanged.
        self.null_target = nn.Parameter(torch.randn(tokens, dim) * 0.02) if null_target else None
        self.brain_pos = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.target_pos = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.time_embed = nn.Sequential(
            SinusoidalEmbedding(dim), nn.Linear(dim, dim * 2), nn.SiLU(), nn.Linear(dim * 2, dim)
        )
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, dim_head, ff_mult) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(dim)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, brain: torch.Tensor, keep: torch.Tensor | None = None,
                keep_target: torch.Tensor | None = None):
        """``keep`` (n,) bool: False rows see the learned null embedding instead of their brain
        tokens; ``keep_target`` likewise for the noised target (needs ``null_target``)."""
        if keep is not None:
            brain = torch.where(keep[:, None, None], brain, self.null_brain[None].to(brain.dtype))
        if keep_target is not None and self.null_target is not None:
            x_t = torch.where(keep_target[:, None, None], x_t, self.null_target[None].to(x_t.dtype))
        seq = torch.cat(
            [brain + self.brain_pos, self.time_embed(t)[:, None].to(brain.dtype), x_t + self.target_pos], dim=1
        )
        for block in self.blocks:
            seq = block(seq)
        return self.to_out(self.norm_out(seq[:, -self.tokens :]))


class DiffusionPrior(nn.Module):
    def __init__(
        self,
        tokens: int,
        dim: int,
        depth: int = 6,
        heads: int = 12,
        dim_head: int = 64,
        ff_mult: int = 4,
        timesteps: int = 100,
        cond_drop_prob: float = 0.2,
        image_cond_drop_prob: float = 0.0,
        embed_scale: float | str = "sqrt_dim",
        sampler: str = "strided",
    ):
        super().__init__()
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        self.tokens, self.dim, self.timesteps, self.cond_drop_prob = tokens, dim, timesteps, cond_drop_prob
        self.image_cond_drop_prob, self.sampler = image_cond_drop_prob, sampler
        self.net = PriorNetwork(tokens, dim, depth, heads, dim_head, ff_mult, null_target=image_cond_drop_prob > 0)
        # Targets are multiplied by embed_scale so the diffusion runs at ~unit variance per element
        # (dalle2's image_embed_scale = sqrt(dim) for unit-norm embeddings). "auto" starts at 1 and
        # is set from training data by ``set_embed_scale``; it is a buffer so runs reload it.
        scale = math.sqrt(dim) if embed_scale == "sqrt_dim" else 1.0 if embed_scale == "auto" else float(embed_scale)
        self.register_buffer("embed_scale", torch.tensor(float(scale)))
        # The schedule is a pure function of ``timesteps``: not saved.
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(timesteps).float(), persistent=False)

    @torch.no_grad()
    def set_embed_scale(self, targets: torch.Tensor) -> float:
        """Scale so that scaled targets have unit root-mean-square (for spaces of unknown norm)."""
        rms = targets.float().pow(2).mean().sqrt().clamp_min(1e-8)
        self.embed_scale.fill_(float(1.0 / rms))
        return float(self.embed_scale)

    def loss(self, brain: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MSE between predicted and true clean (scaled) targets at a random timestep.

        Uses the global torch RNG (timesteps, noise, condition dropout) so that restoring the RNG
        state on resume reproduces a run exactly. Returns ``(loss, predicted x0 unscaled)``.
        """
        n = len(target)
        x0 = target * self.embed_scale
        t = torch.randint(0, self.timesteps, (n,), device=target.device)
        noise = torch.randn_like(x0)
        ac = self.alphas_cumprod[t][:, None, None]
        x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
        keep, keep_target = self.drop_masks(n, target.device)
        pred = self.net(x_t, t, brain, keep, keep_target)
        return F.mse_loss(pred.float(), x0.float()), pred / self.embed_scale

    def drop_masks(self, n: int, device=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training rows that keep their brain tokens and (with ``image_cond_drop_prob``) their
        noised target; drawn from the global RNG, brain first, as the loss does."""
        keep = torch.rand(n, device=device) >= self.cond_drop_prob
        keep_target = None
        if self.image_cond_drop_prob > 0:
            keep_target = torch.rand(n, device=device) >= self.image_cond_drop_prob
        return keep, keep_target

    def _predict_x0(self, x_t, t, brain, cond_scale):
        pred = self.net(x_t, t, brain)
        if cond_scale != 1.0:
            # The unconditional branch drops what training dropped: brain tokens and noised target.
            drop = torch.zeros(len(x_t), dtype=torch.bool, device=x_t.device)
            null = self.net(x_t, t, brain, drop, drop)
            pred = null + (pred - null) * cond_scale
        return pred

    def timestep_grid(self, steps: int) -> list[int]:
        """The timesteps a ``steps``-step sample visits, noisiest first."""
        if self.sampler == "mindeye2" and steps < self.timesteps:
            grid = torch.linspace(-1.0, self.timesteps, steps + 1)[:-1].int().tolist()
            return [t for t in reversed(grid) if t >= 0]
        ts = torch.linspace(0, self.timesteps - 1, steps, dtype=torch.float64).round().long().unique()
        return ts.flip(0).tolist()

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        steps: int | None = None,
        cond_scale: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Run the reverse process from noise; returns (n, tokens, dim) in the target's units."""
        steps = self.timesteps if steps is None else int(steps)
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"steps must be in 1..{self.timesteps}, got {steps}")
        n, device = len(cond), cond.device
        ts = self.timestep_grid(steps)
        ac_all = self.alphas_cumprod.double().cpu()
        x = torch.randn((n, self.tokens, self.dim), generator=generator, device="cpu").to(device, cond.dtype)
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else None
            ab_t = float(ac_all[t])
            ab_prev = float(ac_all[t_prev]) if t_prev is not None else 1.0
            tt = torch.full((n,), t, device=device, dtype=torch.long)
            x0 = self._predict_x0(x, tt, cond, cond_scale)
            if t_prev is None:
                x = x0
                break
            beta = 1 - ab_t / ab_prev  # the re-spaced step's beta
            coef_x0 = math.sqrt(ab_prev) * beta / (1 - ab_t)
            coef_xt = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)
            var = beta * (1 - ab_prev) / (1 - ab_t)
            noise = torch.randn(x.shape, generator=generator, device="cpu").to(device, x.dtype)
            x = coef_x0 * x0 + coef_xt * x + math.sqrt(var) * noise
        return x / self.embed_scale
