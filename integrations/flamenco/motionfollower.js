// MotionFollower job type for Flamenco 3 (docs/flamenco.md): put this file in the Manager's
// `scripts/` folder; the job type is called "motionfollower".
//
// One job edits one shot:
//   prepare          poses and masks of the whole shot, once (`python -m mf_backend prepare`)
//   edit-A-B  (N)    overlapping chunks A..B of the shot, each an `edit` that reuses the prepared
//                    poses/masks; all depend on `prepare` and can run on different workers
//   merge            `merge-chunks`: cross-fades the overlaps and writes the shot to `output`
//                    atomically; depends on every chunk
// Intermediate folders live next to the output, in `<output>__intermediate-<job creation time>`,
// like Flamenco's own render jobs. Every task runs the worker's `exec` command; its type is
// "motionfollower", so only workers that list it in their task_types (those with the backend
// installed and a GPU) take these tasks.

const JOB_TYPE = {
    label: "MotionFollower",
    description: "Edit the motion of the person in a shot: they perform the driving clip's motion",
    settings: [
        { key: "source", type: "string", subtype: "file_path", required: true,
          description: "Source clip (video file or frame folder) on storage the workers share" },
        { key: "driving", type: "string", subtype: "file_path", required: true,
          description: "Driving clip whose motion the person follows" },
        { key: "output", type: "string", subtype: "dir_path", required: true,
          description: "Output folder for the edited shot (must not exist or be empty)" },
        { key: "frame_start", type: "int32", required: true, description: "First source frame to edit (0-based)" },
        { key: "frame_end", type: "int32", required: true, description: "Last source frame to edit (inclusive)" },
        { key: "model", type: "string", default: "auto", description: "auto, official, demo, or a weights folder" },
        { key: "steps", type: "int32", default: 0, description: "Denoising steps (0: the model's own default)" },
        { key: "seed", type: "int32", default: 42, description: "Noise seed (the same noise per frame in every chunk)" },
        { key: "size", type: "int32", default: 0,
          description: "Working resolution of the model, square (0: the model's own, 512 for the released one)" },
        { key: "timing", type: "string", default: "hold-last", choices: ["hold-last", "loop", "stretch"],
          description: "How the driving clip's time maps onto the shot (every frame of the range is edited)" },
        { key: "chunk_length", type: "int32", default: 48, description: "Frames per chunk task" },
        { key: "chunk_overlap", type: "int32", default: 8,
          description: "Frames shared by neighbouring chunks, cross-faded by the merge (at most half a chunk)" },
        { key: "backend_cmd", type: "string", default: "python3 -m mf_backend",
          description: "How a worker runs the backend (its venv's Python, e.g. /opt/mf/.venv/bin/python -m mf_backend)" },
        { key: "prepare_args", type: "string", default: "", description: "Extra flags for `prepare`" },
        { key: "edit_args", type: "string", default: "", description: "Extra flags for every chunk's `edit`" },
    ],
};

const TASK_TYPE = "motionfollower";
const PREPARED = ["source_poses", "target_aligned_poses", "source_masks", "predicted_masks"];

function compileJob(job) {
    const s = jobSettings(job.settings);
    const workDir = intermediatePath(job, s.output);
    const prepared = path.join(workDir, "prepared");
    const backend = words(s.backend_cmd);
    const shot = ["--source", s.source, "--driving", s.driving, "--frame-start", String(s.frame_start),
                  "--frame-end", String(s.frame_end), "--timing", s.timing];

    const prepareTask = author.Task("prepare", TASK_TYPE);
    prepareTask.addCommand(exec(backend, ["prepare", ...shot, "--out", prepared, ...words(s.prepare_args)]));
    job.addTask(prepareTask);

    const ranges = chunkRanges(s.frame_start, s.frame_end, s.chunk_length, s.chunk_overlap);
    const chunkDirs = [];
    const chunkTasks = [];
    for (const [a, b] of ranges) {
        const dir = path.join(workDir, `chunk-${pad(a)}-${pad(b)}`);
        const task = author.Task(`edit-${a}-${b}`, TASK_TYPE);
        task.addCommand(exec(backend, [
            "edit", ...shot.slice(0, 4), "--out", dir, "--chunk",
            ...preparedArgs(prepared),
            "--frame-start", String(a), "--frame-end", String(b), "--timing", s.timing,
            "--model", s.model, "--seed", String(s.seed), ...positive("--steps", s.steps), ...positive("--size", s.size),
            ...words(s.edit_args),
        ]));
        task.addDependency(prepareTask);
        job.addTask(task);
        chunkDirs.push(dir);
        chunkTasks.push(task);
    }

    const mergeTask = author.Task("merge", TASK_TYPE);
    mergeTask.addCommand(exec(backend, ["merge-chunks", ...chunkDirs, "--out", s.output]));
    for (const task of chunkTasks) {
        mergeTask.addDependency(task);
    }
    job.addTask(mergeTask);
    print(`MotionFollower: frames ${s.frame_start}..${s.frame_end} in ${ranges.length} chunk(s) of ` +
          `${s.chunk_length} (overlap ${s.chunk_overlap}); intermediate files in ${workDir}`);
}

// Overlapping [first, last] frame ranges covering a..b: chunks of `length` frames starting every
// length - overlap frames; the last one ends at b (it may be shorter). With overlap <= length / 2
// every frame is in at most two chunks and neighbours share exactly `overlap` frames.
function chunkRanges(a, b, length, overlap) {
    const ranges = [];
    for (let start = a; ; start += length - overlap) {
        const end = Math.min(start + length - 1, b);
        ranges.push([start, end]);
        if (end === b) {
            return ranges;
        }
    }
}

// The submitted settings with JOB_TYPE's defaults filled in, checked.
function jobSettings(submitted) {
    const s = {};
    for (const def of JOB_TYPE.settings) {
        const value = submitted[def.key];
        if (value === undefined || value === null || value === "") {
            if (def.required) {
                throw new Error(`MotionFollower job: setting '${def.key}' is required (${def.description})`);
            }
            s[def.key] = def.default;
            continue;
        }
        if (def.type === "int32" && !Number.isInteger(Number(value))) {
            throw new Error(`MotionFollower job: setting '${def.key}' must be a whole number, got ${value}`);
        }
        if (def.choices && !def.choices.includes(value)) {
            throw new Error(`MotionFollower job: '${def.key}' must be one of ${def.choices.join(", ")}, got ${value}`);
        }
        s[def.key] = def.type === "int32" ? Number(value) : value;
    }
    if (s.frame_start < 0 || s.frame_end < s.frame_start) {
        throw new Error(`MotionFollower job: frames ${s.frame_start}..${s.frame_end} are not a range of source frames`);
    }
    if (s.chunk_length < 1 || s.chunk_overlap < 0 || 2 * s.chunk_overlap > s.chunk_length) {
        throw new Error(`MotionFollower job: chunk_overlap (${s.chunk_overlap}) must be 0..half of chunk_length ` +
                        `(${s.chunk_length}), so that every frame is in at most two chunks`);
    }
    if (words(s.backend_cmd).length === 0) {
        throw new Error("MotionFollower job: backend_cmd is empty; give the worker's command, e.g. python3 -m mf_backend");
    }
    return s;
}

// --source-poses <prepared>/source_poses ... : the chunk's `edit` reuses the shot's poses and masks
function preparedArgs(prepared) {
    const args = [];
    for (const name of PREPARED) {
        args.push("--" + name.replace(/_/g, "-"), path.join(prepared, name));
    }
    return args;
}

// a flag for a setting whose 0 means "the backend's default"
function positive(flag, value) {
    return value > 0 ? [flag, String(value)] : [];
}

function exec(backend, args) {
    // the worker's exec command takes the program and a list of string arguments
    return author.Command("exec", { exe: backend[0], args: backend.slice(1).concat(args) });
}

function words(text) {
    return String(text || "").split(/\s+/).filter((w) => w.length > 0);
}

function pad(frame) {
    return String(frame).padStart(6, "0");
}

function intermediatePath(job, output) {
    const name = `${path.basename(output)}__intermediate-${formatTimestampLocal(job.created)}`;
    return path.join(path.dirname(output), name);
}
