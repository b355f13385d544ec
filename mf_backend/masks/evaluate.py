"""`python -m mf_backend eval-seg`: mask quality on real clips nobody tuned on, and the time of `prepare`.

Self-transfer protocol (issue 16), per 24-frame real clip, from raw frames only: frames 0–11 are the
source, frames 12–23 of the same clip the driving clip, `prepare --align none` (the same stage functions:
`compute_poses`, `source_masks`, `predict_masks`). Source mask i is compared with the clip's SAM mask of
frame i, predicted mask i with the SAM mask of frame 12+i (IoU at 512², threshold 0.5 = 127 on 8 bits).

Leave-one-case-out: every knob chosen by measuring on the dev cases (M_r: guided-filter radius/eps and
hole size; M_e: BlazePose's landmark filter on/off, templates of the geometric vote, the model's fusion
weight) is re-chosen for each case on the OTHER cases only, and
that case's LOCO figure uses the re-chosen value, so it predicts footage the choice never saw.
Synthetic ground truth: held-out pairs of the synthetic world (seeds ≥ 9000, never trained on): source
frame f + aligned target pose f → the ground-truth edit's mask f.
Timing: seconds per stage of prepare for 24 source + 24 driving frames at 512².
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from mf_backend.masks.predict import iou

# The candidates each LOCO fold chooses from (the shipped values are among them).
MR_GRID = list(itertools.product((2, 4, 8), (1e-3, 1e-2, 3e-2), (None, 0.002, 0.01)))  # radius, eps, hole
# mediapipe's landmark filter on?, templates, fusion weight
ME_GRID = list(itertools.product((False, True), (1, 3, 5), (0.3, 0.5)))


def _at_512(masks: np.ndarray) -> np.ndarray:
    if masks.shape[1:] == (512, 512):
        return masks
    return np.stack([cv2.resize(m.astype(np.float32), (512, 512), interpolation=cv2.INTER_LINEAR) for m in masks])


def _score(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(iou(_at_512(pred), _at_512(gt)).mean())


def run_case(case: Path, predictor: str, ctx=None) -> dict:
    """The protocol on one case folder (source_images + SAM source_masks) → IoUs, LOCO inputs, seconds."""
    from mf_backend.jobs import JobContext
    from mf_backend.masks.predict import predict_masks
    from mf_backend.masks.source import clean_masks, mediapipe_probabilities, person_probabilities, refine_edges, source_masks
    from mf_backend.media import read_clip, read_masks
    from mf_backend.params import JobParams
    from mf_backend.prepare import compute_poses

    frames = read_clip(case / "source_images").frames
    sam = read_masks(case / "source_masks")
    half = len(frames) // 2
    src, drv, gt_src, gt_tgt = frames[:half], frames[half:2 * half], sam[:half], sam[half:2 * half]
    ctx = ctx or JobContext()
    out: dict = {"seconds": {}}
    t = time.perf_counter()
    prep = compute_poses(src, drv, JobParams(align="none"), ctx)
    out["seconds"]["poses"] = time.perf_counter() - t
    t = time.perf_counter()
    M_r = source_masks(src, poses=prep.source, ctx=ctx)
    out["seconds"]["M_r"] = time.perf_counter() - t
    t = time.perf_counter()
    M_e, info = predict_masks(src, M_r, prep.source, prep.aligned, predictor, ctx=ctx)
    out["seconds"]["M_e"] = time.perf_counter() - t
    out.update(M_r=_score(M_r, gt_src), M_e=_score(M_e, gt_tgt), M_e_info=info,
               selfie=_score(clean_masks(mediapipe_probabilities(src) >= 0.5), gt_src))
    # Grids for the leave-one-case-out choice.
    prob = person_probabilities(src)
    out["M_r_grid"] = {(r, eps, hole): _score(clean_masks(refine_edges(src, prob, r, eps) >= 0.5, bodies=prep.source.body,
                                                          max_hole=hole, fill_holes=hole is not None), gt_src)
                       for r, eps, hole in MR_GRID}
    out["M_e_grid"] = {}
    for smooth in (False, True):
        if not smooth:  # the shipped extractor setting: prepare's own poses
            src_p, tgt_p = prep.source, prep.aligned
        else:
            from mf_backend.pose.align import align_poses
            from mf_backend.pose.extract import extract_mediapipe

            src_p = extract_mediapipe(src, smooth_landmarks=smooth)
            tgt_p = align_poses(src_p, extract_mediapipe(drv, smooth_landmarks=smooth), "none")
        for _, k, wt in (v for v in ME_GRID if v[0] == smooth):
            pred, _ = predict_masks(src, M_r, src_p, tgt_p, predictor, templates=k, fusion_weight=wt)
            out["M_e_grid"][smooth, k, wt] = _score(pred, gt_tgt)
    return out


def leave_one_case_out(results: dict[str, dict]) -> dict[str, dict]:
    """Per case: the knobs that score best on the other cases, and this case's IoU with them."""
    out = {}
    for name, res in results.items():
        others = [r for n, r in results.items() if n != name] or [res]
        mr = max(MR_GRID, key=lambda v: np.mean([r["M_r_grid"][v] for r in others]))
        me = max(ME_GRID, key=lambda v: np.mean([r["M_e_grid"][v] for r in others]))
        out[name] = {"M_r": res["M_r_grid"][mr], "M_e": res["M_e_grid"][me], "M_r_choice": list(mr),
                     "M_e_choice": list(me)}
    return out


def eval_synthetic(seed: int, predictor: str, size: int = 256) -> dict[str, float]:
    """Held-out synthetic pair: the world's M_r and poses, M_e vs the ground-truth edit's masks."""
    from mf_backend.masks.predict import predict_masks
    from mf_backend.synthetic.pair import make_pair

    p = make_pair(seed, frames=16, size=size)
    row = {}
    for name in dict.fromkeys(("geometric", predictor)):
        pred, _ = predict_masks(p.source.frames, p.source.masks, p.source.poses, p.target_aligned.poses, name)
        row[name] = float(iou(pred, p.gt_edited.masks).mean())
    return row


def bench_prepare(cases: Optional[Path], predictor: str) -> dict[str, float]:
    """Seconds per stage of prepare's poses + masks for 24 source and 24 driving frames at 512²: a real
    source and another person driving (dev cases 1 and 2) when the cases are here, else a synthetic pair."""
    from mf_backend.jobs import JobContext
    from mf_backend.masks.predict import predict_masks
    from mf_backend.masks.source import source_masks
    from mf_backend.params import JobParams
    from mf_backend.prepare import compute_poses

    if cases is not None and (cases / "case-1").is_dir() and (cases / "case-2").is_dir():
        from mf_backend.media import read_clip

        src, drv = (read_clip(cases / c / "source_images", max_frames=24).frames for c in ("case-1", "case-2"))
    else:
        from mf_backend.synthetic.pair import make_pair

        p = make_pair(1234, frames=24, size=512)
        src, drv = p.source.frames, p.target.frames
    ctx = JobContext()
    sec: dict[str, float] = {}
    clock = [time.perf_counter(), time.process_time()]

    def lap(name: str) -> None:  # wall seconds, and CPU seconds of this process (all its threads)
        now = [time.perf_counter(), time.process_time()]
        sec[name], sec[name + "_cpu"] = now[0] - clock[0], now[1] - clock[1]
        clock[:] = now

    start = list(clock)
    prep = compute_poses(src, drv, JobParams(), ctx)
    lap("poses")
    M_r = source_masks(src, poses=prep.source, ctx=ctx)
    lap("M_r")
    predict_masks(src, M_r, prep.source, prep.aligned, predictor, ctx=ctx)
    lap("M_e")
    sec["total"], sec["total_cpu"] = clock[0] - start[0], clock[1] - start[1]
    return sec


def _fmt(d: dict) -> str:
    return "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


def evaluate(cases: Optional[str], predictor: str = "auto", synthetic: int = 4, synthetic_seed: int = 9000,
             do_timing: bool = True, threads: int = 2, timing_only: bool = False) -> dict:
    """Run the protocol, LOCO, synthetic rows and the timing; print them; return the numbers."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    root = Path(cases).expanduser() if cases else None
    results: dict = {"predictor": predictor, "real": {}, "synthetic": {}}
    real: dict[str, dict] = {}
    if timing_only:
        synthetic, do_timing = 0, True
    elif root is not None and root.is_dir():
        for case in sorted(p for p in root.iterdir() if (p / "source_images").is_dir() and (p / "source_masks").is_dir()):
            real[case.name] = r = run_case(case, predictor)
            print(f"{case.name}: M_r {r['M_r']:.3f} (selfie {r['selfie']:.3f})  M_e {r['M_e']:.3f} "
                  f"[{r['M_e_info']['predictor']}, self-check step {r['M_e_info'].get('self_check', {}).get('step', '-')}]  "
                  f"(filter, templates, weight): " + " ".join(f"{int(a)},{b},{c}:{v:.3f}" for (a, b, c), v in r["M_e_grid"].items())
                  + "  seconds " + _fmt(r["seconds"]), flush=True)
    elif cases:
        print(f"cases folder '{cases}' not found: real-case rows skipped")
    if real:
        loco = leave_one_case_out(real)
        for name, row in loco.items():
            print(f"LOCO {name}: M_r {row['M_r']:.3f} (radius, eps, hole = {row['M_r_choice']})  "
                  f"M_e {row['M_e']:.3f} (landmark filter, templates, fusion weight = {row['M_e_choice']})")
        keys = ("M_r", "M_e", "selfie")
        mean = {k: float(np.mean([r[k] for r in real.values()])) for k in keys}
        mean_loco = {k: float(np.mean([r[k] for r in loco.values()])) for k in ("M_r", "M_e")}
        print(f"MEAN real ({len(real)}): " + _fmt(mean))
        print(f"MEAN LOCO ({len(real)}): " + _fmt(mean_loco))
        results["real"] = {n: {k: v for k, v in r.items() if not k.startswith("_") and not k.endswith("_grid")}
                           for n, r in real.items()}
        results["loco"] = loco
        results["real_mean"], results["loco_mean"] = mean, mean_loco
    for k in range(synthetic):
        results["synthetic"][str(synthetic_seed + k)] = row = eval_synthetic(synthetic_seed + k, predictor)
        print(f"synthetic {synthetic_seed + k}: M_e " + _fmt(row), flush=True)
    if results["synthetic"]:
        rows = list(results["synthetic"].values())
        results["synthetic_mean"] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        print(f"MEAN synthetic ({len(rows)}): M_e " + _fmt(results["synthetic_mean"]))
    if do_timing:
        results["timing_24x512"] = sec = bench_prepare(root, predictor)
        load = os.getloadavg()[0]
        print(f"timing prepare, 24+24 frames at 512x512, torch threads {threads}, load average {load:.1f} "
              f"on {os.cpu_count()} CPUs: " + "  ".join(f"{k} {v:.1f}s" for k, v in sec.items()
                                                        if not k.endswith("_cpu"))
              + "  | CPU seconds: " + "  ".join(f"{k[:-4]} {v:.1f}" for k, v in sec.items() if k.endswith("_cpu")))
        results["load_average"] = load
    return results
