"""Command line: `python -m mf_backend <command>`.

Every command calls the same library functions as the protocol (`dispatch.run_job`, `environment`,
`weights`), so the CLI, the JSON-RPC server and the Blender add-on behave alike. Subsystems add
their own commands (synth, train-seg, train, bench) through `register(subparsers)` in their
`cli` module, listed in EXTENSIONS.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import typing
from typing import Any, Optional

from mf_backend import __version__
from mf_backend.errors import MFError, translate_exception
from mf_backend.params import (ADVANCED_GROUPS, GROUPS, AdvancedParams, JobParams, advanced_fields, job_fields, nest,
                                user_fields)

EXTENSIONS = (
    "mf_backend.synthetic.cli",
    "mf_backend.masks.cli",
    "mf_backend.train.cli",
    "mf_backend.bench.cli",
    "mf_backend.chunks",
    "mf_backend.distributed.cli",
)


GROUP_TITLES = {"inputs": "inputs and output", "model": "model and device", "sampling": "sampling",
                "footage": "real footage",
                "overrides": "advanced: overrides of the files' values, mask predictor, chunks (protocol: "
                             "params.advanced)",
                "speed": "advanced: speed and memory (docs/performance.md, docs/scale-out.md)",
                "guidance": "advanced: consistency-guidance research knobs (defaults are the reference's)"}


def _add_job_arguments(p: argparse.ArgumentParser, job: str, required: tuple[str, ...]) -> None:
    """One flag per JobParams field the job uses, the advanced group's included (--guidance-scale for
    guidance_scale, --camera/--no-camera for bools), in the help sections of params.GROUPS and
    ADVANCED_GROUPS, with the field's help and allowed values."""
    hints = {**typing.get_type_hints(JobParams), **typing.get_type_hints(AdvancedParams)}
    groups = {g: p.add_argument_group(GROUP_TITLES[g]) for g in GROUPS + ADVANCED_GROUPS}
    for f in job_fields(job):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        if typing.get_origin(hint) is typing.Union:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        text = f.metadata["help"]
        if f.default not in ("", None):
            text += f" (default: {f.default})"
        g = groups[f.metadata["group"]]
        # default None: only flags the user gives override JobParams' defaults
        if hint is bool:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            g.add_argument(flag, type=hint, default=None, required=f.name in required, help=text,
                           choices=f.metadata["choices"] or None)


def _add_setting_arguments(p: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """Server-wide settings (serve, doctor): the JobParams fields of the same name, same help and values."""
    fields = {f.name: f for f in user_fields()}
    hints = typing.get_type_hints(JobParams)
    for name in names:
        f = fields[name]
        hint = int if hints[name] is int else str
        p.add_argument("--" + name.replace("_", "-"), type=hint, help=f.metadata["help"],
                       choices=f.metadata["choices"] or None)


def job_params_from_args(args: argparse.Namespace) -> JobParams:
    names = {f.name for f in user_fields() + advanced_fields()}
    return JobParams.from_dict(nest({k: v for k, v in vars(args).items() if k in names and v is not None}))


def _print_progress(event: dict[str, Any]) -> None:
    eta = f" eta {event['eta_s']:.0f}s" if event.get("eta_s") is not None else ""
    msg = f" {event['message']}" if event.get("message") else ""
    print(f"[{event['fraction'] * 100:5.1f}%] {event['stage']} {event['done']}/{event['total']}{eta}{msg}",
          file=sys.stderr, flush=True)


def run_job_cli(method: str, params: JobParams, quiet: bool = False) -> dict[str, Any]:
    from mf_backend.dispatch import run_job
    from mf_backend.jobs import JobContext

    ctx = JobContext(job_id=method, sink=None if quiet else _print_progress)
    return run_job(method, params, ctx)


def cmd_job(args: argparse.Namespace) -> int:
    result = run_job_cli(args.command, job_params_from_args(args), quiet=args.quiet)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from mf_backend.protocol import serve

    defaults = {k: v for k, v in (("models_dir", args.models_dir), ("device", args.device),
                                  ("precision", args.precision), ("threads", args.threads)) if v is not None}
    return serve(defaults)


def cmd_doctor(args: argparse.Namespace) -> int:
    from mf_backend.environment import backend_info

    info = backend_info(args.models_dir, args.device or "auto", args.precision or "auto")
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    w = info["weights"]
    print(f"mf_backend {__version__}  python {info['python']}  torch {info['torch']}")
    print(f"device: {info['device']}" + (f" ({info['gpu']})" if info["gpu"] else "") + f"  dtype: {info['dtype']}")
    print(f"pose extractors: {', '.join(info['capabilities']['pose_extractors'])}")
    print(f"models folder: {w['models_dir']}" + ("" if w["models_dir_exists"] else "  (does not exist)"))
    print(f"embedded demo model: {'present' if w['demo_model'] else 'MISSING (reinstall the package)'}")
    print(f"mask predictor: {'present' if w['mask_model'] else 'missing: the geometric fallback is used'}")
    for item in w["present"]:
        print(f"  ok       {item['file']}")
    for item in w["missing"]:
        print(f"  MISSING  {item['file']}  [{item['group']}] {item['what']}")
        print(f"           put it at: {item['put_it_at']}")
        print(f"           get it from: {item['get_it_from']}")
    if w["official_model"]:
        print("The released MotionFollower model is complete and is used by default.")
    else:
        print("The released MotionFollower model is incomplete: edits use the embedded demo model "
              "(small, trained on synthetic people). Put the files above in the models folder, or pass "
              "--models-dir / set MF_MODELS_DIR, to use the released model.")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    if args.action == "list":
        from mf_backend.weights import weights_report

        print(json.dumps(weights_report(args.models_dir), indent=2))
        return 0
    from mf_backend.models.checkpoints import weights_command

    return weights_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mf_backend", description="MotionFollower backend")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="speak JSON-RPC 2.0 on stdin/stdout (for the Blender add-on and other hosts)")
    _add_setting_arguments(p, ("models_dir", "device", "precision", "threads"))
    p.set_defaults(func=cmd_serve)

    from mf_backend.preflight import REQUIRED

    for name, helptext in (
        ("prepare", "poses and masks only, in the example-case folder layout"),
        ("edit", "the whole edit: prepare, score-guided sampling, decode, write frames"),
        ("demo", "the main job: a synthetic clip edited with the embedded demo model"),
    ):
        usage = " ".join(f"--{r} {r.upper()}" for r in REQUIRED[name])
        p = sub.add_parser(name, help=helptext, description=helptext,
                           usage=f"%(prog)s {usage} [options]  (options by section below)")
        _add_job_arguments(p, name, REQUIRED[name])
        p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
        p.set_defaults(func=cmd_job)

    p = sub.add_parser("doctor", help="environment, device and weights report, with what to do about missing pieces")
    _add_setting_arguments(p, ("models_dir", "device", "precision"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("weights", help="list/verify the models folder, print the official manifest, convert to safetensors")
    p.add_argument("action", choices=("list", "verify", "manifest", "convert"))
    p.add_argument("--models-dir")
    p.add_argument("--config", default="official", help="model config for `manifest` (official, tiny, demo)")
    p.add_argument("--out", help="output file/folder for `convert`")
    p.set_defaults(func=cmd_weights)

    for module_name in EXTENSIONS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # subsystem not installed in this build
            raise
        module.register(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; no partial output was left", file=sys.stderr)
        return 130
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, SystemExit):
            raise
        err = translate_exception(exc)
        if not isinstance(exc, MFError):
            import traceback

            traceback.print_exc(file=sys.stderr)
        print(f"error: {err}", file=sys.stderr)
        return 2
