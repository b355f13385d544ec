// node --test integrations/flamenco/ : the MotionFollower job type compiled by the Flamenco stand-in.
"use strict";

process.env.TZ = "UTC"; // formatTimestampLocal uses local time; the expected folder names are in UTC

const assert = require("node:assert/strict");
const nodePath = require("node:path");
const test = require("node:test");

const { loadJobType } = require("./flamenco.js");

const SCRIPT = nodePath.join(__dirname, "..", "motionfollower.js");
const CREATED = "2026-11-30T16:05:09Z";
const WORK = "/farm/shots/sh010/edit__intermediate-2026-11-30_160509";
const PREPARED = `${WORK}/prepared`;

function compileShot(settings, extra = {}) {
    const { compile } = loadJobType(SCRIPT);
    return compile({
        name: "sh010 motion edit", type: "motionfollower", priority: 50, created: CREATED, ...extra,
        settings: {
            source: "/farm/shots/sh010/plate.mov", driving: "/farm/refs/dance.mp4", output: "/farm/shots/sh010/edit",
            backend_cmd: "/opt/mf/.venv/bin/python -m mf_backend", ...settings,
        },
    });
}

const byName = (job) => Object.fromEntries(job.tasks.map((t) => [t.name, t]));
const args = (task) => task.commands[0].parameters.args;
const flag = (task, name) => args(task)[args(task).indexOf(name) + 1];
const chunkRanges = (job) => job.tasks.filter((t) => t.name.startsWith("edit-"))
    .map((t) => [Number(flag(t, "--frame-start")), Number(flag(t, "--frame-end"))]);

/** The task graph every compiled shot must have, whatever its length. */
function checkGraph(job, a, b, length, overlap) {
    const tasks = byName(job);
    const prepare = tasks.prepare;
    const merge = tasks.merge;
    const edits = job.tasks.filter((t) => t.name.startsWith("edit-"));
    assert.equal(job.tasks.length, edits.length + 2);
    assert.equal(job.tasks[0].name, "prepare");
    assert.equal(job.tasks.at(-1).name, "merge");
    for (const t of job.tasks) {
        assert.equal(t.type, "motionfollower");
        assert.equal(t.commands.length, 1);
        assert.equal(t.commands[0].name, "exec");
        assert.equal(t.commands[0].parameters.exe, "/opt/mf/.venv/bin/python");
        assert.deepEqual(args(t).slice(0, 2), ["-m", "mf_backend"]);
    }
    assert.deepEqual(prepare.dependencies, []);
    assert.equal(args(prepare)[2], "prepare");
    assert.equal(flag(prepare, "--out"), PREPARED);
    assert.deepEqual([flag(prepare, "--frame-start"), flag(prepare, "--frame-end")], [String(a), String(b)]);
    for (const t of edits) {
        assert.deepEqual(t.dependencies, [prepare.uuid]);
        assert.equal(args(t)[2], "edit");
        assert.equal(flag(t, "--source-poses"), `${PREPARED}/source_poses`);
        assert.equal(flag(t, "--target-aligned-poses"), `${PREPARED}/target_aligned_poses`);
        assert.equal(flag(t, "--source-masks"), `${PREPARED}/source_masks`);
        assert.equal(flag(t, "--predicted-masks"), `${PREPARED}/predicted_masks`);
    }
    assert.deepEqual(merge.dependencies, edits.map((t) => t.uuid));
    assert.equal(args(merge)[2], "merge-chunks");
    assert.equal(flag(merge, "--out"), "/farm/shots/sh010/edit");
    assert.deepEqual(args(merge).slice(3, -2), edits.map((t) => flag(t, "--out")));

    // the chunks cover a..b, neighbours share exactly `overlap` frames, no frame is in three chunks
    const ranges = chunkRanges(job);
    assert.equal(ranges[0][0], a);
    assert.equal(ranges.at(-1)[1], b);
    ranges.forEach(([s, e], i) => {
        assert.ok(s <= e && e - s + 1 <= length, `chunk ${s}-${e} is longer than ${length}`);
        if (i > 0) assert.equal(ranges[i - 1][1] - s + 1, overlap, `overlap before chunk ${s}-${e}`);
        if (i > 1) assert.ok(ranges[i - 2][1] < s, `frame ${s} is in three chunks`);
    });
    return ranges;
}

test("JOB_TYPE offers the issue's settings with defaults", () => {
    const { jobType } = loadJobType(SCRIPT);
    assert.equal(jobType.name, "motionfollower");
    const keys = jobType.settings.map((s) => s.key);
    for (const key of ["source", "driving", "output", "model", "steps", "seed", "size", "chunk_length",
                       "chunk_overlap", "backend_cmd"]) {
        assert.ok(keys.includes(key), key);
    }
    const defaults = Object.fromEntries(jobType.settings.map((s) => [s.key, s.default]));
    assert.equal(defaults.chunk_length, 48);
    assert.equal(defaults.chunk_overlap, 8);
    assert.equal(defaults.backend_cmd, "python3 -m mf_backend");
    assert.equal(defaults.steps, 0); // the model's own steps and size
    assert.equal(defaults.size, 0);
});

test("a 600-frame shot compiles to prepare, 15 chunks of 48 with 8 shared, merge", () => {
    const job = compileShot({ frame_start: 0, frame_end: 599, steps: 25, seed: 7, size: 512, model: "official" });
    const ranges = checkGraph(job, 0, 599, 48, 8);
    assert.equal(job.tasks.length, 17);
    const expected = [];
    for (let s = 0; s < 560; s += 40) expected.push([s, s + 47]);
    expected.push([560, 599]);
    assert.deepEqual(ranges, expected);
    const first = byName(job)["edit-0-47"];
    assert.deepEqual(args(first), [
        "-m", "mf_backend", "edit", "--source", "/farm/shots/sh010/plate.mov", "--driving", "/farm/refs/dance.mp4",
        "--out", `${WORK}/chunk-000000-000047`, "--chunk",
        "--source-poses", `${PREPARED}/source_poses`, "--target-aligned-poses", `${PREPARED}/target_aligned_poses`,
        "--source-masks", `${PREPARED}/source_masks`, "--predicted-masks", `${PREPARED}/predicted_masks`,
        "--frame-start", "0", "--frame-end", "47", "--timing", "hold-last",
        "--model", "official", "--seed", "7", "--steps", "25", "--size", "512",
    ]);
    assert.deepEqual(args(byName(job).prepare), [
        "-m", "mf_backend", "prepare", "--source", "/farm/shots/sh010/plate.mov", "--driving", "/farm/refs/dance.mp4",
        "--frame-start", "0", "--frame-end", "599", "--timing", "hold-last", "--out", PREPARED,
    ]);
});

test("a shot shorter than a chunk is one chunk", () => {
    const job = compileShot({ frame_start: 0, frame_end: 19 });
    assert.deepEqual(checkGraph(job, 0, 19, 48, 8), [[0, 19]]);
    assert.equal(job.tasks.length, 3);
});

test("a shot of exactly one chunk, and of chunks that tile exactly", () => {
    assert.deepEqual(checkGraph(compileShot({ frame_start: 0, frame_end: 47 }), 0, 47, 48, 8), [[0, 47]]);
    const ranges = checkGraph(compileShot({ frame_start: 0, frame_end: 127 }), 0, 127, 48, 8); // 48 + 2 × 40
    assert.deepEqual(ranges, [[0, 47], [40, 87], [80, 127]]);
});

test("odd lengths and a range that does not start at 0", () => {
    const odd = checkGraph(compileShot({ frame_start: 0, frame_end: 128 }), 0, 128, 48, 8);
    assert.deepEqual(odd, [[0, 47], [40, 87], [80, 127], [120, 128]]); // the last chunk: 1 new frame
    const job = compileShot({ frame_start: 101, frame_end: 213, chunk_length: 30, chunk_overlap: 7 });
    assert.deepEqual(checkGraph(job, 101, 213, 30, 7), [[101, 130], [124, 153], [147, 176], [170, 199], [193, 213]]);
    const noOverlap = compileShot({ frame_start: 0, frame_end: 9, chunk_length: 4, chunk_overlap: 0 });
    assert.deepEqual(checkGraph(noOverlap, 0, 9, 4, 0), [[0, 3], [4, 7], [8, 9]]);
    const half = compileShot({ frame_start: 0, frame_end: 13, chunk_length: 6, chunk_overlap: 3 });
    assert.deepEqual(checkGraph(half, 0, 13, 6, 3), [[0, 5], [3, 8], [6, 11], [9, 13]]);
});

test("settings from the submission reach the commands; extra flags are appended", () => {
    const job = compileShot({ frame_start: 0, frame_end: 9, timing: "loop", prepare_args: " --pose-extractor decode ",
                              edit_args: "--device cuda  --precision bf16", backend_cmd: "mf-backend" });
    const { prepare, merge } = byName(job);
    assert.deepEqual(args(byName(job)["edit-0-9"]).slice(-8, -4), ["--model", "auto", "--seed", "42"]);  // 0 steps/size: the model's
    assert.equal(prepare.commands[0].parameters.exe, "mf-backend");
    assert.deepEqual(args(prepare).slice(-2), ["--pose-extractor", "decode"]);
    const edit = byName(job)["edit-0-9"];
    assert.deepEqual(args(edit).slice(-4), ["--device", "cuda", "--precision", "bf16"]);
    assert.equal(flag(edit, "--timing"), "loop");
    assert.equal(args(merge)[0], "merge-chunks");
});

test("bad settings are refused with the setting's name", () => {
    const cases = [
        [{ frame_start: 0, frame_end: 99, chunk_length: 10, chunk_overlap: 6 }, /chunk_overlap/],
        [{ frame_start: 10, frame_end: 5 }, /not a range/],
        [{ frame_start: 0 }, /'frame_end' is required/],
        [{ frame_start: 0, frame_end: 9, source: "" }, /'source' is required/],
        [{ frame_start: 0, frame_end: 9, timing: "trim" }, /timing/],
        [{ frame_start: 0, frame_end: 9, steps: 2.5 }, /'steps' must be a whole number/],
        [{ frame_start: 0, frame_end: 9, backend_cmd: "   " }, /backend_cmd/],
    ];
    for (const [settings, message] of cases) {
        assert.throws(() => compileShot(settings), message, JSON.stringify(settings));
    }
});

test("the script logs what it compiled through print", () => {
    const jt = loadJobType(SCRIPT);
    jt.compile({ name: "x", created: CREATED, settings: { source: "/s", driving: "/d", output: "/o",
                                                            frame_start: 0, frame_end: 99 } });
    assert.equal(jt.log.length, 1);
    assert.match(String(jt.log[0].args[0]), /3 chunk\(s\) of 48/);
});
