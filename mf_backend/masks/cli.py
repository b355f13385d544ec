"""`train-seg` and `eval-seg` commands (torch is imported inside the handlers)."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("train-seg", help="train the target-mask predictor (M_e) on synthetic pairs and/or real videos")
    p.add_argument("--out", required=True, help="folder for config.json + model.safetensors (a previous model there is replaced)")
    p.add_argument("--config", default="small", help="model size: full (≈6 M params), small (shipped), tiny")
    p.add_argument("--init", help="start from the weights in this folder (fine-tuning)")
    p.add_argument("--clips", type=int, default=160, help="synthetic clips (self-supervised pairs within a clip)")
    p.add_argument("--pairs", type=int, default=80, help="synthetic edit pairs (source frame + aligned pose → GT edit mask)")
    p.add_argument("--frames", type=int, default=16, help="frames per synthetic clip")
    p.add_argument("--videos", action="append", default=[],
                   help="folder of real videos / frame folders / example cases for self-supervision (repeatable)")
    p.add_argument("--models-dir", help="models folder (pose extractor weights for --videos)")
    p.add_argument("--minutes", type=float, default=None, help="training time budget")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 300 when --minutes is not given)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest on a shared 2-core machine; 0 = torch's default)")
    p.set_defaults(func=cmd_train_seg)

    p = subparsers.add_parser("eval-seg", help="mask IoU on real clips (self-transfer, leave-one-case-out), "
                                               "synthetic held-out pairs, and prepare's seconds per stage")
    p.add_argument("--cases", help="folder of 24-frame cases with source_images + SAM source_masks "
                                   "(e.g. ../shared/real-cases); skipped when absent")
    p.add_argument("--predictor", default="auto", choices=("auto", "model", "geometric"), help="M_e predictor")
    p.add_argument("--synthetic", type=int, default=4, help="held-out synthetic pairs (0 = skip)")
    p.add_argument("--synthetic-seed", type=int, default=9000, help="first seed of the held-out synthetic pairs")
    p.add_argument("--timing", action=argparse.BooleanOptionalAction, default=True,
                   help="time prepare's poses and masks for 24 frames at 512x512")
    p.add_argument("--timing-only", action="store_true",
                   help="only the prepare benchmark (on --cases' case-1 and case-2 when given, else synthetic)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target: 2 cores)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_eval_seg)


def cmd_train_seg(args: argparse.Namespace) -> int:
    import logging
    import time
    from pathlib import Path

    import torch

    from mf_backend.errors import InvalidParams
    from mf_backend.masks.model import TargetMaskPredictor, count_parameters, get_seg_config, load_predictor, save_predictor
    from mf_backend.masks.train import synthetic_groups, train_steps, video_groups

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out).expanduser()
    ours = {"config.json", "model.safetensors"}
    if out.exists() and any(p.name not in ours for p in out.iterdir()):
        raise InvalidParams(f"output '{out}' contains files other than a mask model ({', '.join(sorted(ours))})",
                            "choose an empty folder or a previous train-seg output")
    torch.manual_seed(args.seed)
    model = load_predictor(args.init).train() if args.init else TargetMaskPredictor(get_seg_config(args.config))
    r = model.config.resolution
    t0 = time.perf_counter()
    groups = synthetic_groups(args.clips, args.pairs, r, seed=args.seed, frames=args.frames) if args.clips + args.pairs else []
    for folder in args.videos:
        groups += video_groups(folder, r, args.models_dir)
    print(f"data: {len(groups)} groups at {r}x{r} in {time.perf_counter() - t0:.0f}s; "
          f"model {count_parameters(model) / 1e6:.2f} M params", file=sys.stderr)
    steps = args.steps if args.steps or args.minutes else 300
    t1 = time.perf_counter()
    losses = train_steps(model, groups, steps=steps, minutes=args.minutes, batch=args.batch, lr=args.lr, seed=args.seed)
    train_s = time.perf_counter() - t1
    save_predictor(model, out, extra={"trained": {
        "command": "python -m mf_backend train-seg " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["train-seg"] else "",
        "steps": len(losses), "seconds": round(train_s), "final_loss": float(sum(losses[-50:]) / max(1, len(losses[-50:]))),
        "groups": len(groups), "torch_threads": torch.get_num_threads()}})
    print(json.dumps({"out": str(out), "steps": len(losses), "train_seconds": round(train_s, 1),
                      "final_loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 5)}))
    return 0


def cmd_eval_seg(args: argparse.Namespace) -> int:
    from mf_backend.masks.evaluate import evaluate

    results = evaluate(args.cases, args.predictor, args.synthetic, args.synthetic_seed, args.timing, args.threads,
                       args.timing_only)
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0
