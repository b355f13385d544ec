"""ConsistencyGuidance: the four region-wise energies of method.md §B and their gradient w.r.t. the
editing latent (the "score guidance" injected into the v-prediction).

Features are the outputs of up blocks 1 and 2 of the estimator, for the reconstruction branch
(source poses, no grad) and the editing branch (target poses, grad). Per frame f and level k:

* fg   (pooled, pull):  cos( mean_{M_e} F_edit , mean_{M_r} F_rec )            -> 0.5 w_fg /(1+4S)
* com  (pooled, pull): (1+cos( mean_{M_body} F_edit , mean_{1-M_r} F_rec ))/2   -> w_com /(1+4S)
* body, over (pixel-wise): one region is pulled  (mean cos          -> 0.5 w /(1+4S)),
                           the other is pushed   (mean (1+cos)/2    -> 0.5 w S)

Which of M_body / M_over is pulled depends on `semantics` (method.md §B.5):
* "code" (default; what the released code does, so parity tests hold): body is PULLED toward the
  reconstruction on M_body = M_r(1-M_e), over is PUSHED apart on M_over = (1-M_r)(1-M_e).
* "paper" (DragonDiffusion lineage, what the paper's description implies): over is PULLED on M_over
  (background kept), body is PUSHED on M_body (vacated region in-painted). The supplement's weights
  for these roles are w_over = 6.0, w_body = 2.4 (`PAPER_WEIGHTS`); a weight left at None takes its
  semantics' default (`GuidanceWeights.for_semantics`), an explicit number wins (0 = off).

Region means are taken at feature resolution with area weights. This equals the reference's nearest
up-sampling of both features and masks to 2x the size of up block 2's output (128^2 at 512 px),
because a nearest x k up-sampling just repeats every feature pixel k^2 times, and it avoids
materialising 1280x128x128 feature maps. Frames whose region is empty are left out of the frame
average (the reference would produce NaN); a term with no valid frame contributes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

LEVELS = (1, 2)  # up blocks whose outputs the energies compare
LEVEL_WEIGHTS = (0.5, 0.5)  # reference `loss_scale`
GRAD_SCALE = 0.04  # reference: gradient x 4e-2 after the energy_scale x 1e3 loss scale
EPS = 1e-8

CODE_WEIGHTS = dict(fg=4.0, over=1.2, body=6.0, com=1.2)
PAPER_WEIGHTS = dict(fg=4.0, over=6.0, body=2.4, com=1.2)
PULL = {"code": ("fg", "body", "com"), "paper": ("fg", "over", "com")}
PUSH = {"code": ("over",), "paper": ("body",)}


@dataclass(frozen=True)
class GuidanceWeights:
    """The four energies' weights; None = the semantics' own weight (CODE_WEIGHTS or PAPER_WEIGHTS), a number
    wins (0 turns the term off, e.g. fg for clips whose orientation changes a lot, as the paper does)."""

    fg: Optional[float] = None
    over: Optional[float] = None
    body: Optional[float] = None
    com: Optional[float] = None

    def for_semantics(self, semantics: str) -> "GuidanceWeights":
        """Every weight a number: the ones left at None from the semantics' defaults."""
        defaults = PAPER_WEIGHTS if semantics == "paper" else CODE_WEIGHTS
        return GuidanceWeights(**{t: defaults[t] if getattr(self, t) is None else float(getattr(self, t))
                                  for t in defaults})

    def active(self, term: str) -> bool:
        return getattr(self, term) != 0.0


class RegionMasks:
    """M_r and M_e of a clip, thresholded at 0.5 and stored at the guidance resolution (2x the latent).

    Everything coarser (latent grid, feature levels, attention grids) is derived by exact integer
    nearest down-sampling, which picks the same pixels as the reference's nearest resize from the
    working resolution.
    """

    def __init__(self, M_r: torch.Tensor, M_e: torch.Tensor, latent_hw: tuple[int, int]):
        # M_r, M_e: (F,H,W) float in [0,1] at the working resolution
        if M_r.shape != M_e.shape or M_r.dim() != 3:
            raise ValueError(f"M_r and M_e must both be (F,H,W); got {tuple(M_r.shape)} and {tuple(M_e.shape)}")
        self.size = (2 * latent_hw[0], 2 * latent_hw[1])
        self.M_r = _nearest((M_r >= 0.5).float(), self.size) > 0.5  # bool (F,U,V)
        self.M_e = _nearest((M_e >= 0.5).float(), self.size) > 0.5
        self.latent_hw = tuple(latent_hw)

    @classmethod
    def _from(cls, M_r: torch.Tensor, M_e: torch.Tensor, latent_hw) -> "RegionMasks":
        obj = cls.__new__(cls)
        obj.M_r, obj.M_e, obj.latent_hw, obj.size = M_r, M_e, tuple(latent_hw), tuple(M_r.shape[-2:])
        return obj

    @property
    def num_frames(self) -> int:
        return int(self.M_r.shape[0])

    def frames(self, idx: torch.Tensor | slice) -> "RegionMasks":
        return RegionMasks._from(self.M_r[idx], self.M_e[idx], self.latent_hw)

    def to(self, device) -> "RegionMasks":
        return RegionMasks._from(self.M_r.to(device), self.M_e.to(device), self.latent_hw)

    def regions(self) -> dict[str, torch.Tensor]:
        """Float (F,U,V) masks of every region the energies use."""
        r, e = self.M_r.float(), self.M_e.float()
        return {"M_r": r, "M_e": e, "M_over": (1 - r) * (1 - e), "M_body": r * (1 - e), "M_bg": 1 - r}

    def nearest(self, which: str, hw: tuple[int, int]) -> torch.Tensor:
        """M_r or M_e nearest-resized to hw (float {0,1}, (F,h,w))."""
        return _nearest(getattr(self, which).float(), hw)

    def latent_M_e(self) -> torch.Tensor:
        """M_e^lat (F,h,w): routes the gradient and the SDE noise."""
        return self.nearest("M_e", self.latent_hw)


def _nearest(m: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(m.shape[-2:]) == tuple(hw):
        return m
    return F.interpolate(m[:, None], size=hw, mode="nearest")[:, 0]


def _area_weights(region: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(F,U,V) region -> (F,h,w) fraction of each feature pixel's nearest-up-sampled block inside it."""
    U, V = region.shape[-2:]
    if U % hw[0] or V % hw[1]:
        raise ValueError(f"guidance resolution {U}x{V} is not a multiple of the feature size {hw}")
    return F.avg_pool2d(region[:, None], kernel_size=(U // hw[0], V // hw[1]))[:, 0]


def _rnorm(x: torch.Tensor, dim: int) -> torch.Tensor:
    # 1/|x| with a floor: finite value and gradient for all-zero vectors
    return torch.rsqrt((x * x).sum(dim).clamp_min(EPS))


def _pooled(feat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """feat (C,F,h,w), w (F,h,w) -> weighted mean per frame (F,C)."""
    return torch.einsum("cfhw,fhw->fc", feat, w) / w.sum((1, 2)).clamp_min(EPS)[:, None]


def _cos_vec(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(F,C),(F,C) -> (F,)"""
    return (a * b).sum(1) * _rnorm(a, 1) * _rnorm(b, 1)


def _value(x: torch.Tensor) -> float:
    """A scalar for the log; NaN on the meta device (FLOP counting runs the sampler without data)."""
    return float("nan") if x.device.type == "meta" else float(x.detach())


def _frame_mean(s: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Average of per-frame similarities s (F,) over the valid frames (0 when none is valid)."""
    v = valid.float()
    return (s * v).sum() / v.sum().clamp_min(1.0)


class ConsistencyGuidance:
    """Energies and their routed gradient. Vectorised over frames; no per-frame Python loops."""

    def __init__(self, weights: GuidanceWeights = GuidanceWeights(), energy_scale: float = 4.0,
                 semantics: str = "code"):
        if semantics not in PULL:
            raise ValueError(f"guidance semantics must be 'code' or 'paper', got {semantics!r}")
        self.semantics = semantics
        self.weights = weights.for_semantics(semantics)
        self.energy_scale = float(energy_scale)

    @property
    def enabled(self) -> bool:
        return self.energy_scale != 0.0 and any(self.weights.active(t) for t in ("fg", "over", "body", "com"))

    def similarities(self, feats_edit: Mapping[int, torch.Tensor], feats_rec: Mapping[int, torch.Tensor],
                     masks: RegionMasks) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Per term, per level: (per-frame similarity (F,), valid frames (F,) bool).

        feats_*: {level: (1,C,F,h,w)}. Pixel-wise terms give both the raw mean cosine ("pull" form)
        and the rescaled (1+cos)/2 mean ("push" form) under the keys "<term>" / "<term>_push".
        """
        regions = masks.regions()
        out: dict[str, list] = {k: [] for k in ("fg", "com", "body", "body_push", "over", "over_push")}
        for k in LEVELS:
            fe = feats_edit[k][0].float()  # (C,F,h,w)
            fr = feats_rec[k][0].float()
            hw = tuple(fe.shape[-2:])
            w = {name: _area_weights(m, hw) for name, m in regions.items()}  # (F,h,w)
            area = {name: m.sum((1, 2)) for name, m in w.items()}  # (F,)
            # pooled terms
            s_fg = _cos_vec(_pooled(fe, w["M_e"]), _pooled(fr, w["M_r"]))
            out["fg"].append((s_fg, (area["M_e"] > 0) & (area["M_r"] > 0)))
            s_com = (1 + _cos_vec(_pooled(fe, w["M_body"]), _pooled(fr, w["M_bg"]))) / 2
            out["com"].append((s_com, (area["M_body"] > 0) & (area["M_bg"] > 0)))
            # pixel-wise cosine map (F,h,w)
            cos = (fe * fr).sum(0) * _rnorm(fe, 0) * _rnorm(fr, 0)
            for term, region in (("body", "M_body"), ("over", "M_over")):
                wm, a = w[region], area[region].clamp_min(EPS)
                valid = area[region] > 0
                out[term].append(((cos * wm).sum((1, 2)) / a, valid))
                out[f"{term}_push"].append((((1 + cos) / 2 * wm).sum((1, 2)) / a, valid))
        return out

    def energy(self, feats_edit: Mapping[int, torch.Tensor], feats_rec: Mapping[int, torch.Tensor],
               masks: RegionMasks) -> tuple[torch.Tensor, torch.Tensor, dict[str, list[float]]]:
        """(L_fg, L_bg, S) with S = {term: [S̄ per level]} (the similarity each term acts on)."""
        sims = self.similarities(feats_edit, feats_rec, masks)
        wt = self.weights
        zero = next(iter(feats_edit.values())).new_zeros((), dtype=torch.float32)
        L_fg, L_bg = zero, zero
        report: dict[str, list[float]] = {}
        for li, lw in enumerate(LEVEL_WEIGHTS):
            S = {}
            S["fg"] = _frame_mean(*sims["fg"][li])
            S["com"] = _frame_mean(*sims["com"][li])
            for term in ("body", "over"):
                key = term if term in PULL[self.semantics] else f"{term}_push"
                S[term] = _frame_mean(*sims[key][li])
            for term, s in S.items():
                report.setdefault(term, []).append(_value(s))
            if wt.active("fg"):
                L_fg = L_fg + lw * wt.fg / (1 + 4 * S["fg"])
            if wt.active("com"):
                L_bg = L_bg + wt.com / (1 + 4 * S["com"])  # the reference has no 0.5 level factor here
            for term in ("body", "over"):
                if not wt.active(term):
                    continue
                w = getattr(wt, term)
                if term in PULL[self.semantics]:
                    L_bg = L_bg + lw * w / (1 + 4 * S[term])
                else:
                    L_bg = L_bg + lw * w * S[term]
        return L_fg, L_bg, report

    def gradient(self, edit_features: Callable[[torch.Tensor], Mapping[int, torch.Tensor]], z: torch.Tensor,
                 feats_rec: Mapping[int, torch.Tensor], masks: RegionMasks,
                 ) -> tuple[torch.Tensor, dict[str, list[float]]]:
        """G (same shape as z (1,4,F,h,w)) to add to the CFG-combined v-prediction.

        G = 0.04 [ grad(E L_fg) * M_e^lat + grad(E L_bg) * (1 - M_e^lat) ], E = energy_scale * 1e3;
        adding G to v moves x̂0 by -sqrt(1-a) G, i.e. gradient descent on L.
        """
        E = self.energy_scale * 1e3
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            feats_edit = edit_features(z)
            L_fg, L_bg, report = self.energy(feats_edit, feats_rec, masks)
            losses = [(E * L_fg, "fg"), (E * L_bg, "bg")]
            live = [(L, n) for L, n in losses if L.requires_grad]
            grads = {}
            for j, (L, name) in enumerate(live):
                (g,) = torch.autograd.grad(L, z, retain_graph=j + 1 < len(live))
                grads[name] = g
        m = masks.latent_M_e().to(z.dtype)[None, None]  # (1,1,F,h,w), broadcast over latent channels
        G = torch.zeros_like(z, requires_grad=False)
        if "fg" in grads:
            G = G + grads["fg"] * m
        if "bg" in grads:
            G = G + grads["bg"] * (1 - m)
        G = (G * GRAD_SCALE).detach()
        if G.device.type != "meta" and not bool(torch.isfinite(G).all()):  # e.g. fp16 overflow: skip it, keep z
            log.warning("consistency guidance produced a non-finite gradient; skipped at this step")
            G = torch.zeros_like(G)
        report["L_fg"] = [_value(L_fg)]
        report["L_bg"] = [_value(L_bg)]
        return G, report


def guidance_from_params(params) -> ConsistencyGuidance:
    """ConsistencyGuidance configured by the JobParams advanced fields w_*, energy_scale, guidance_semantics."""
    a = params.advanced
    w = GuidanceWeights(fg=a.w_fg, over=a.w_over, body=a.w_body, com=a.w_com)
    return ConsistencyGuidance(w, energy_scale=a.energy_scale, semantics=a.guidance_semantics)
