"""`bench speed`: the full edit on random weights (the compute does not depend on the weights), with the
speed switches of the sampler and the model, timed per stage, with peak GPU memory and MFU.

    python -m mf_backend bench speed --config official --frames 24 --size 512 --steps 50 --precision bf16
    python -m mf_backend bench speed --config official ... --matrix          # several variants, one table
    python -m mf_backend bench speed --config tiny --frames 2 --size 64 --steps 3 --device cpu   # CI

Stages: prepare (0 here: random inputs, no pose/mask extraction), conditions (CLIP tokens, PoCtr,
ReCtr), reconstruction (with `batch`: the one no-grad pass of the step's input latents, i.e. the
reconstruction and the CFG halves batched with it), editing (the other CFG passes, replay re-noise,
DDIM), guidance (estimator passes, energies, backward), decode (VAE). With `fuse` the conditional CFG
half runs inside "guidance".

FLOPs are those of `bench flops` (mf_backend/bench/flops.py: the same edit run on the meta device,
counted by torch.utils.flop_counter) with the variant's switches. Activation-checkpoint recompute is
not counted (MFU counts model FLOPs, not hardware FLOPs).
"""

from __future__ import annotations

import gc
import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Optional

from mf_backend.bench import flops

H100_BF16_TFLOPS = 790.0  # dense bf16 measured on this workplace's H100s (docs/performance.md)
STAGES = ("prepare", "conditions", "reconstruction", "editing", "guidance", "decode")


@dataclass(frozen=True)
class Variant:
    """One configuration of the speed switches."""

    name: str = "fast"
    reuse: bool = True  # reconstruction pass's up-block features reused for guidance
    fuse: bool = True  # guidance pass fused with the conditional CFG half
    batch: bool = True  # a step's no-grad passes as one UNet call
    stop: bool = True  # no reconstruction after the last guidance step (outside camera mode)
    checkpoint: str = "none"  # checkpointing in the grad pass (sampler.CHECKPOINT_PRESETS, a list, or "auto")
    compile: str = "none"  # torch.compile of the UNet: "blocks" (layer by layer) or "full" (models/compile.py)
    compile_mode: str = "default"
    channels_last: bool = False
    sdpa: str = "auto"  # attention kernel: auto (PyTorch's choice), cudnn, flash, efficient, math
    decode_batch: int = 8
    offload: bool = False  # CLIP and the VAE wait on the host while the UNet runs (low memory)


MATRIX = (  # most wanted first: the time budget skips from the end
    Variant("default (+stop+batch)"),
    Variant("before #21 (reuse+fuse)", batch=False, stop=False),  # the attention change is not a switch
    Variant("ckpt=hires", checkpoint="hires"),
    Variant("ckpt=down", checkpoint="down"),  # bench activations: <= 16 GB with less recompute than hires
    Variant("ckpt=down0,down1", checkpoint="down0,down1"),  # least recompute; predicted just over 16 GB
    Variant("sdpa cudnn", sdpa="cudnn"),
    Variant("sdpa flash", sdpa="flash"),
    Variant("compile blocks", compile="blocks"),
    Variant("compile blocks ckpt=down", compile="blocks", checkpoint="down"),
    Variant("compile blocks cudagraphs", compile="blocks", compile_mode="reduce-overhead"),
    Variant("channels_last", channels_last=True),
    Variant("low-memory (ckpt=all)", checkpoint="all", decode_batch=2, offload=True),
    Variant("+stop, no batch", batch=False),
    Variant("baseline (all off)", reuse=False, fuse=False, batch=False, stop=False),
    Variant("compile full", compile="full"),
)


def variant_switches(variant: Variant) -> dict[str, bool]:
    """The sampler settings a variant switches (names of SamplerSettings)."""
    return dict(reuse_features=variant.reuse, fuse_guidance=variant.fuse, batch_passes=variant.batch,
                stop_reconstruction=variant.stop)


# ---------------------------------------------------------------------------------------------- running


def set_fast_math(tf32: bool) -> None:
    """TF32 matmuls/convolutions (fp32 ops only; bf16 runs are unaffected) and cuDNN autotuning."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


def _apply_model_switches(models, variant: Variant, original_unet: torch.nn.Module) -> None:
    import torch

    from mf_backend.models.compile import compile_unet

    unet = original_unet
    unet.to(memory_format=torch.channels_last if variant.channels_last else torch.contiguous_format)
    models.unet = compile_unet(unet, variant.compile, variant.compile_mode)


def sdpa_backend(name: str):
    """Context restricting F.scaled_dot_product_attention to one kernel ("auto": no restriction)."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    if name == "auto":
        return contextlib.nullcontext()
    if name not in kernels:
        raise ValueError(f"sdpa must be auto or one of {sorted(kernels)}, got {name!r}")
    return sdpa_kernel(kernels[name])


def _release(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def run_variant(models, inputs_fn: Callable[[], Any], params, variant: Variant, warmup_steps: int = 2,
                peak_tflops: Optional[float] = None, count_flops: bool = True) -> dict[str, Any]:
    """One timed edit (after an untimed `warmup_steps` edit: cuDNN autotuning; with compile, a whole
    untimed edit, so that `warmup_s` is the compile time and the timed edit compiles nothing)."""
    import torch

    from mf_backend.editing.pipeline import decode_latents, memory_plan, offload_idle_models, sampler_settings
    from mf_backend.editing.guidance import guidance_from_params
    from mf_backend.editing.sampler import MotionEditSampler, StageTimer

    dev = str(models.device.type)
    original = models.unet  # compile_unet works in place
    _apply_model_switches(models, variant, original)
    try:
        frames = inputs_fn().num_frames
        mem = memory_plan(models, params.with_advanced(checkpoint=variant.checkpoint), frames)
        decode_batch = mem.decode_batch if variant.checkpoint == "auto" else variant.decode_batch
        settings = replace(sampler_settings(params, mem.checkpoint), **variant_switches(variant))
        guidance = guidance_from_params(params)

        def edit(steps: int, timer: StageTimer) -> None:
            s = MotionEditSampler(models, guidance, replace(settings, steps=steps), timer=timer)
            inputs = inputs_fn()
            if variant.offload or mem.offload:
                offload_idle_models(models, s, inputs)
            with sdpa_backend(variant.sdpa):
                result = s(inputs)
            with timer.section("decode"):
                decode_latents(models, result.latents, decode_batch)

        t0 = time.perf_counter()
        if variant.compile != "none":  # every pass kind and shape compiles in the warm-up, not in the timed run
            warmup_steps = params.steps
        if warmup_steps:
            edit(warmup_steps, StageTimer(dev, sync=True))
        warm_s = time.perf_counter() - t0
        _release(dev)
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        timer = StageTimer(dev, sync=True)
        t0 = time.perf_counter()
        edit(params.steps, timer)
        total = time.perf_counter() - t0
        out: dict[str, Any] = {
            "variant": variant.name, **{k: v for k, v in asdict(variant).items() if k != "name"},
            "memory_plan": mem.to_dict(),
            "frames_per_min": round(frames / total * 60, 2), "total_s": round(total, 3),
            "stages_s": {"prepare": 0.0, **{k: round(v, 3) for k, v in timer.seconds.items()}},
            "warmup_s": round(warm_s, 2),
        }
        if dev == "cuda":
            out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
            out["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2 ** 30, 2)
        if count_flops:
            fl = flops.cached_edit_flops(models.config.name, frames, params, variant_switches(variant))
            out["tflop"] = float(f"{fl['flop'] / 1e12:.4g}")
            out["unet_frames"] = fl["unet_frames"]
            out["achieved_tflops"] = float(f"{fl['flop'] / 1e12 / total:.4g}")
            if peak_tflops:
                out["mfu"] = round(fl["flop"] / 1e12 / total / peak_tflops, 3)
        return out
    finally:
        from mf_backend.models.compile import uncompile_unet

        models.unet = uncompile_unet(original)
        models.image_encoder.to(models.device)  # after an offload
        models.vae.to(models.device)
        original.to(memory_format=torch.contiguous_format)
        if variant.compile != "none":
            import torch._dynamo as dynamo

            dynamo.reset()
        _release(dev)


def build(config: str, device: str, precision: str, seed: int = 0):
    from mf_backend.environment import resolve_device, resolve_dtype
    from mf_backend.models.loading import build_models

    dev = resolve_device(device)
    models = build_models(config, seed).to(dev, resolve_dtype(precision, dev)).eval()
    models.requires_grad_(False)
    return models


def _row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['variant']:<24} FAILED: {r['error']}"
    st = r["stages_s"]
    mem = f"{r['peak_gpu_gib']:6.2f}" if "peak_gpu_gib" in r else "   n/a"
    mfu = f"{100 * r['mfu']:5.1f}%" if "mfu" in r else "   n/a"
    return (f"{r['variant']:<24} {r['frames_per_min']:8.2f} {r['total_s']:8.2f} "
            + " ".join(f"{st.get(k, 0.0):7.2f}" for k in STAGES) + f" {mem} {r.get('tflop', 0):8.4g} {mfu}")


HEADER = (f"{'variant':<24} {'frm/min':>8} {'total_s':>8} " + " ".join(f"{k[:7]:>7}" for k in STAGES)
          + f" {'GiB':>6} {'TFLOP':>8} {'MFU':>6}")


def bench_speed(config: str = "official", frames: int = 24, size: int = 512, steps: int = 50,
                device: str = "auto", precision: str = "auto", variants: tuple[Variant, ...] = (Variant(),),
                warmup_steps: int = 2, time_budget_s: float = 540.0, tf32: bool = True,
                peak_tflops: Optional[float] = None, camera: bool = False, seed: int = 0,
                emit: Callable[[dict[str, Any]], None] = lambda r: None) -> list[dict[str, Any]]:
    """Run every variant in one process (models built once); each in try/except, memory freed between
    them, `emit` called as soon as one is done; variants that would not fit the time budget are skipped."""
    import torch

    from mf_backend.bench.inputs import random_inputs
    from mf_backend.params import JobParams

    t_start = time.perf_counter()
    set_fast_math(tf32)
    models = build(config, device, precision, seed)
    dev = str(models.device.type)
    if peak_tflops is None and dev == "cuda" and models.dtype in (torch.bfloat16, torch.float16):
        peak_tflops = H100_BF16_TFLOPS
    params = JobParams(steps=steps, size=size, camera=camera, seed=seed)
    params.validate()
    inputs = random_inputs(frames, size, seed)
    inputs.tokens = None
    results = []
    last_s = 0.0
    for v in variants:
        elapsed = time.perf_counter() - t_start
        need = 1.3 * last_s + (90.0 if v.compile != "none" else 0.0)
        if results and elapsed + need > time_budget_s:
            r = {"variant": v.name, "error": f"skipped: {elapsed:.0f} s used of the {time_budget_s:.0f} s budget"}
        elif v.compile != "none" and dev != "cuda" and len(variants) > 1:
            r = {"variant": v.name, "error": "skipped: the matrix compiles on CUDA only (use --compile alone)"}
        else:
            t0 = time.perf_counter()
            try:
                r = run_variant(models, lambda: _fresh(inputs), params, v, warmup_steps, peak_tflops)
            except Exception as exc:  # noqa: BLE001 - a variant failing (OOM, compile) must not end the matrix
                traceback.print_exc(file=sys.stderr)
                first = (str(exc).splitlines() or [""])[0][:200]
                r = {"variant": v.name, "error": f"{type(exc).__name__}: {first}"}
            _release(dev)  # outside the except block: the exception's frames no longer hold tensors
            last_s = time.perf_counter() - t0
        r.update(config=config, frames=frames, size=size, steps=steps, device=dev,
                 dtype=str(models.dtype).replace("torch.", ""))
        if dev == "cuda":
            r["gpu"] = torch.cuda.get_device_name(0)
        results.append(r)
        emit(r)
    return results


def _fresh(inputs):
    """The same random clip for every run, CLIP tokens recomputed (they are part of the conditions stage)."""
    from dataclasses import replace as dc_replace

    return dc_replace(inputs, tokens=None)


# ---------------------------------------------------------------------------------------------- CLI


def variant_from_args(a) -> Variant:
    ckpt = a.checkpoint or ("all" if a.low_memory else "none")
    batch = a.decode_batch or (2 if a.low_memory else 8)
    name = "+".join(n for n, on in (("no-reuse", a.no_reuse), ("no-fuse", a.no_fuse), ("no-batch", a.no_batch),
                                    ("no-stop", a.no_stop),
                                    (f"compile {a.compile}", a.compile != "none"),
                                    ("channels_last", a.channels_last), ("low-memory", a.low_memory),
                                    (f"sdpa {a.sdpa}", a.sdpa != "auto")) if on)
    if ckpt != "none":
        name += f" ckpt={ckpt}"
    return Variant(name.strip() or "fast", reuse=not a.no_reuse, fuse=not a.no_fuse, batch=not a.no_batch,
                   stop=not a.no_stop, checkpoint=ckpt,
                   compile=a.compile, compile_mode=a.compile_mode, channels_last=a.channels_last, decode_batch=batch, sdpa=a.sdpa,
                   offload=a.low_memory)


def add_arguments(p) -> None:
    """Arguments of `bench speed` (wired by mf_backend/bench/cli.py)."""
    p.add_argument("--config", default="official", help="model config: official, demo, tiny")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument("--device", default="auto")
    p.add_argument("--camera", action="store_true", help="camera mode (K/V injection from step 20)")
    p.add_argument("--no-reuse", action="store_true", help="recompute the estimator features on z_rec")
    p.add_argument("--no-fuse", action="store_true", help="separate guidance pass and batched CFG pass")
    p.add_argument("--no-batch", action="store_true", help="a separate UNet call per no-grad pass")
    p.add_argument("--no-stop", action="store_true", help="run the reconstruction to the last step")
    p.add_argument("--checkpoint", default=None,
                   help="activation checkpointing in the grad pass: none, all, hires, down, or a list "
                        "like down0,down1,up2, or auto (the fastest that fits the GPU's free memory); "
                        "default none; all with --low-memory")
    p.add_argument("--low-memory", action="store_true",
                   help="checkpoint all blocks, decode 2 frames at a time, CLIP and VAE wait on the host")
    p.add_argument("--compile", nargs="?", const="blocks", default="none", choices=("none", "blocks", "full"),
                   help="torch.compile the UNet layer by layer (blocks, the default with no value) or whole (full)")
    p.add_argument("--compile-mode", default="default", help="default, max-autotune, max-autotune-no-cudagraphs")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--sdpa", default="auto", choices=("auto", "cudnn", "flash", "efficient", "math"),
                   help="attention kernel (auto = PyTorch's choice)")
    p.add_argument("--decode-batch", type=int, default=None, help="frames per VAE decode call (default 8)")
    p.add_argument("--no-tf32", action="store_true")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed short edit first (0 = none)")
    p.add_argument("--matrix", action="store_true",
                   help="the variants of MATRIX, most wanted first (compile skipped on CPU)")
    p.add_argument("--time-budget", type=float, default=540.0, help="seconds for the whole matrix")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"for MFU (default {H100_BF16_TFLOPS} = H100 dense bf16, on CUDA bf16/fp16)")
    p.add_argument("--json", action="store_true", help="one JSON line per variant instead of the table")


def run(a) -> int:
    variants = MATRIX if a.matrix else (variant_from_args(a),)
    if a.matrix and a.compile_mode != "default":
        variants = tuple(replace(v, compile_mode=a.compile_mode) for v in variants)
    out = sys.stdout
    print("prepare = 0 s: random inputs (no pose or mask extraction); conditions = CLIP tokens, PoCtr, ReCtr; "
          "MFU counts model FLOPs (checkpoint recompute excluded)", file=out, flush=True)
    if not a.json:
        print(HEADER, file=out, flush=True)

    def emit(r: dict[str, Any]) -> None:
        print(json.dumps(r) if a.json else _row(r), file=out, flush=True)

    results = bench_speed(a.config, a.frames, a.size, a.steps, a.device, a.precision, variants, a.warmup_steps,
                          a.time_budget, not a.no_tf32, a.peak_tflops, a.camera, emit=emit)
    if not a.json:  # the full records (one JSON line each), then the table again
        for r in results:
            print(json.dumps(r), file=out, flush=True)
        print(HEADER, file=out)
        for r in results:
            print(_row(r), file=out, flush=True)
    return 0 if any("error" not in r for r in results) else 1
