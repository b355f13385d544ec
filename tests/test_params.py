"""JobParams: few top-level knobs, one documented `advanced` group, the keys of earlier releases mapped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mf_backend.errors import InvalidParams
from mf_backend.params import AdvancedParams, JobParams, advanced_fields, job_fields, nest, user_fields
from mf_backend.protocol.queue_job import KEYS as QUEUE_KEYS

REPO = Path(__file__).resolve().parents[1]


def test_at_most_25_user_facing_fields_at_the_top_level():
    names = [f.name for f in user_fields()]
    assert len(names) <= 25, names
    assert "advanced" not in names and not {"w_fg", "energy_scale", "checkpoint", "window"} & set(names)
    assert not [f.name for f in user_fields() + advanced_fields() if f.name.startswith("use_") or f.name == "low_memory"]
    print(f"{len(names)} top-level fields, {len(advanced_fields())} advanced")


def _documented_keys(table: str) -> set[str]:
    return {k for row in table.splitlines()[2:] for k in re.findall(r"`(\w+)`", row.split("|")[1])}


def test_protocol_tables_list_exactly_the_fields():
    text = (REPO / "docs" / "protocol.md").read_text()
    tables = re.findall(r"\n(\| key \| type \| default \| meaning \|\n(?:\|.*\n)+)", text)
    assert len(tables) == 3
    assert _documented_keys(tables[0]) - {"job_id"} == {f.name for f in user_fields()} | {"advanced"}
    assert _documented_keys(tables[1]) == {f.name for f in advanced_fields()}
    assert _documented_keys(tables[2]) == set(QUEUE_KEYS)  # the `queue` request's own params


def test_nested_advanced_group_round_trips_and_reports_unknown_keys():
    p = JobParams.from_dict({"steps": 3, "advanced": {"w_fg": 0, "checkpoint": "low-memory", "colour": 1}})
    assert p.steps == 3 and p.advanced.w_fg == 0.0 and p.advanced.checkpoint == "low-memory"
    assert p.advanced.w_over is None  # the semantics' own weight
    assert p.extra == {"advanced.colour": 1} and p.warnings == ["unknown parameter 'advanced.colour' ignored"]
    again = JobParams.from_dict(p.to_dict())
    assert again.advanced == p.advanced and again.steps == 3 and not again.warnings
    assert p.with_advanced(window=8).advanced.window == 8 and p.advanced.window == 24
    with pytest.raises(InvalidParams, match="'advanced' must be a JSON object"):
        JobParams.from_dict({"advanced": [1]})
    with pytest.raises(InvalidParams, match="advanced.window"):
        JobParams.from_dict({"advanced": {"window": "8"}})


@pytest.mark.parametrize("legacy,expected", [
    ({"w_fg": 2.0}, {"w_fg": 2.0}),
    ({"window": 8, "overlap": 2, "mask_predictor": "geometric"}, {"window": 8, "overlap": 2, "mask_predictor": "geometric"}),
    ({"use_fg": False}, {"w_fg": 0.0}),
    ({"use_body": False, "w_body": 6.0}, {"w_body": 0.0}),  # the 0.1 add-on sent both: off wins
    ({"use_com": True, "w_com": 2.0}, {"w_com": 2.0}),
    ({"low_memory": True, "checkpoint": "hires"}, {"checkpoint": "low-memory"}),  # low_memory overrode checkpoint
    ({"low_memory": False, "checkpoint": "hires"}, {"checkpoint": "hires"}),
    ({"w_fg": 2.0, "advanced": {"w_fg": 3.0}}, {"w_fg": 3.0}),  # the nested value wins
])
def test_flat_keys_of_earlier_releases_map_into_advanced_with_a_warning(legacy, expected):
    p = JobParams.from_dict(legacy)
    for key, value in expected.items():
        assert getattr(p.advanced, key) == value, key
    flat = [k for k in legacy if k != "advanced"]
    assert len(p.warnings) == len(flat) and all("deprecated" in w and "0.3" in w for w in p.warnings)
    assert not p.extra


def test_legacy_switches_are_type_checked():
    for key, value in (("use_fg", "no"), ("low_memory", 1)):
        with pytest.raises(InvalidParams, match=key):
            JobParams.from_dict({key: value})


def test_every_choice_is_validated_up_front_nested_too():
    for d, name in (({"pose_extractor": "bogus"}, "pose_extractor"), ({"advanced": {"mask_predictor": "bogus"}}, "mask_predictor"),
                    ({"advanced": {"compile": "fast"}}, "compile"), ({"advanced": {"w_com": 1e9}}, "w_com"),
                    ({"advanced": {"overlap": 24}}, "overlap"), ({"advanced": {"workers": 0}}, "workers")):
        with pytest.raises(InvalidParams, match=name):
            JobParams.from_dict(d)


def test_cli_flags_nest_the_advanced_ones():
    from mf_backend.cli import build_parser, job_params_from_args

    args = build_parser().parse_args(["edit", "--source", "s", "--driving", "d", "--out", "o", "--steps", "3",
                                      "--w-body", "0", "--checkpoint", "low-memory", "--guidance-semantics", "paper"])
    p = job_params_from_args(args)
    assert p.steps == 3 and not p.warnings
    assert (p.advanced.w_body, p.advanced.checkpoint, p.advanced.guidance_semantics) == (0.0, "low-memory", "paper")
    assert nest({"steps": 3}) == {"steps": 3} and nest({"w_fg": 1})["advanced"] == {"w_fg": 1}
    assert {f.name for f in job_fields("prepare")} & {"steps", "w_fg", "checkpoint", "guidance_scale"} == set()
    assert AdvancedParams().checkpoint == "auto"


def test_jobs_file_defaults_and_jobs_merge_their_advanced_groups(tmp_path):
    import json

    import numpy as np

    from mf_backend.distributed.shots import load_jobs
    from mf_backend.media import write_frames

    for name in ("src", "drv"):
        write_frames(np.zeros((2, 64, 64, 3), np.uint8), tmp_path / name)
    job = {"source": str(tmp_path / "src"), "driving": str(tmp_path / "drv"), "model": "demo"}
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"defaults": {"steps": 3, "advanced": {"w_fg": 0, "window": 8}},
                                "jobs": [{**job, "out": str(tmp_path / "a"), "advanced": {"window": 6}},
                                         {**job, "out": str(tmp_path / "b"), "low_memory": True}]}))
    a, b = (s.params for s in load_jobs(str(jobs)))
    assert (a.steps, a.advanced.w_fg, a.advanced.window) == (3, 0.0, 6)  # the job's own value wins, key by key
    assert (b.advanced.w_fg, b.advanced.window, b.advanced.checkpoint) == (0.0, 8, "low-memory") and b.warnings
