// A stand-in for Flamenco Manager's job compiler (Flamenco itself cannot run here), so that job type
// scripts can be compiled under node. Modelled on Flamenco 3's internal/manager/job_compilers:
// - the script runs as a plain script in a fresh VM whose globals are `author`, `path`, `print`,
//   `alert`, `frameChunker` and `formatTimestampLocal` (scripts.go newGojaVM, js_globals.go);
// - JOB_TYPE is read from the VM and compileJob(job) is called with the submitted job
//   (job_compilers.go); Go field names appear uncapitalised (name, jobType, priority, created, settings,
//   metadata) and job.addTask appends a COPY of the task, as Go's `append(aj.Tasks, *at)` does;
// - author.Task(name, type) trims both and throws when either is empty; tasks get a UUID, priority 50,
//   and addCommand/addDependency (author.go); author.Command(name, parameters);
// - frameChunker and path follow js_globals.go and path.go (Go's filepath semantics), checked in
//   flamenco.test.js against the cases of Flamenco's own Go tests.
// Checks Flamenco does when it stores or runs the job are added: dependencies must be tasks of the
// job, and an `exec` command needs a string `exe` and a list of string `args` (the worker's exec).
//
// Run as a program, it compiles a job from JSON: node flamenco.js SCRIPT.js JOB.json → compiled job JSON.
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const nodePath = require("node:path");
const vm = require("node:vm");

class AuthoredTask {
    constructor(name, type) {
        this.uuid = crypto.randomUUID();
        this.name = name;
        this.type = type;
        this.priority = 50;
        this.commands = [];
        this.dependencies = [];
    }

    addCommand(command) {
        this.commands.push(command);
    }

    addDependency(task) {
        this.dependencies.push(task);
    }
}

const author = {
    Task(name, type) {
        name = String(name ?? "").trim();
        type = String(type ?? "").trim();
        if (!name) throw new Error("author.Task(name, type): name is required");
        if (!type) throw new Error("author.Task(name, type): type is required");
        return new AuthoredTask(name, type);
    },
    Command(name, parameters) {
        return { name, parameters };
    },
};

// ---- path: Go's path/filepath on a POSIX worker ---------------------------------------------------

function clean(p) {
    if (p === "") return ".";
    const out = nodePath.posix.normalize(p);
    return out.length > 1 && out.endsWith("/") ? out.slice(0, -1) : out;
}

const goPath = {
    basename(p) {
        if (p === "") return ".";
        const trimmed = p.replace(/\/+$/, "");
        return trimmed === "" ? "/" : trimmed.slice(trimmed.lastIndexOf("/") + 1);
    },
    dirname(p) {
        return clean(p.slice(0, p.lastIndexOf("/") + 1));
    },
    join(...parts) {
        const nonEmpty = parts.filter((x) => x !== "");
        return nonEmpty.length ? clean(nonEmpty.join("/")) : "";
    },
    stem(p) {
        const base = goPath.basename(p);
        const dot = base.lastIndexOf(".");
        return dot >= 0 ? base.slice(0, dot) : base;
    },
};

// ---- frameChunker: "1..10,20-25,40" → chunks of at most chunkSize frames in "regular" notation ------

function frameRangeExplode(frameRange) {
    const frames = new Set();
    for (const part of frameRange.replaceAll("..", "-").split(",")) {
        const ends = part.split("-").map((x) => x.trim());
        const nums = ends.map((x) => (/^[+-]?\d+$/.test(x) ? Number(x) : NaN));
        if (ends.length > 2 || nums.some(Number.isNaN)) {
            throw new Error(`invalid range "${frameRange}": ${part}`);
        }
        for (let f = nums[0]; f <= nums[nums.length - 1]; f++) frames.add(f);
    }
    return [...frames].sort((a, b) => a - b);
}

function frameRangeMerge(frames) {
    const ranges = [];
    const append = (from, to) => {
        if (from === to) ranges.push(String(from));
        else if (from + 1 === to) ranges.push(String(from), String(to));
        else ranges.push(`${from}-${to}`);
    };
    let start = frames[0];
    let prev = frames[0];
    for (const f of frames) {
        if (f > prev + 1) {
            append(start, prev);
            start = f;
        }
        prev = f;
    }
    append(start, prev);
    return ranges.join(",");
}

function frameChunker(frameRange, chunkSize) {
    frameRange = String(frameRange).trim();
    if (frameRange.length === 0) throw new Error(`invalid range "${frameRange}": empty range`);
    if (!(chunkSize >= 1)) throw new Error(`invalid chunk size, must be positive number: ${chunkSize}`);
    const frames = frameRangeExplode(frameRange);
    if (frames.length === 0) throw new Error(`invalid range "${frameRange}": empty range`);
    const chunks = [];
    for (let i = 0; i < frames.length; i += chunkSize) {
        chunks.push(frameRangeMerge(frames.slice(i, i + chunkSize)));
    }
    return chunks;
}

function formatTimestampLocal(date) {
    const p = (n) => String(n).padStart(2, "0");
    return `${date.getFullYear()}-${p(date.getMonth() + 1)}-${p(date.getDate())}_` +
           `${p(date.getHours())}${p(date.getMinutes())}${p(date.getSeconds())}`;
}

// ---- the compiler ---------------------------------------------------------------------------------

/** Load a job type script into a fresh VM: {jobType, compile(submittedJob) → compiled job, log}. */
function loadJobType(scriptPath) {
    const log = [];
    const context = vm.createContext({
        author,
        path: goPath,
        frameChunker,
        formatTimestampLocal,
        print: (...args) => log.push({ level: "info", args }),
        alert: (...args) => log.push({ level: "warn", args }),
    });
    vm.runInContext(fs.readFileSync(scriptPath, "utf8"), context, { filename: scriptPath });
    const jobType = JSON.parse(JSON.stringify(vm.runInContext("JOB_TYPE", context)));
    if (typeof context.compileJob !== "function") {
        throw new Error(`${scriptPath}: script does not define a compileJob(job) function`);
    }
    jobType.name = nodePath.basename(scriptPath, ".js").replaceAll("_", "-");
    return { jobType, log, compile: (submitted) => compile(context, jobType, submitted) };
}

function compile(context, jobType, submitted) {
    if (submitted.type !== undefined && submitted.type !== jobType.name) {
        throw new Error(`job type unknown: ${submitted.type}`);
    }
    const tasks = [];
    const job = {
        jobID: crypto.randomUUID(),
        name: submitted.name,
        jobType: jobType.name,
        priority: submitted.priority ?? 50,
        created: submitted.created ? new Date(submitted.created) : new Date(),
        settings: { ...(submitted.settings || {}) },
        metadata: { ...(submitted.metadata || {}) },
        addTask(task) {
            tasks.push({ ...task, commands: [...task.commands], dependencies: [...task.dependencies] });
        },
    };
    context.compileJob(job);
    const uuids = new Set(tasks.map((t) => t.uuid));
    const out = tasks.map((t) => {
        for (const dep of t.dependencies) {
            if (!uuids.has(dep.uuid)) {
                throw new Error(`task "${t.name}" depends on "${dep.name}", which is not a task of this job`);
            }
        }
        t.commands.forEach((c) => checkCommand(t, c));
        return {
            uuid: t.uuid, name: t.name, type: t.type, priority: t.priority,
            commands: t.commands.map((c) => ({ name: c.name, parameters: c.parameters })),
            dependencies: t.dependencies.map((d) => d.uuid),
        };
    });
    return JSON.parse(JSON.stringify({
        name: job.name, type: job.jobType, priority: job.priority, settings: job.settings,
        metadata: job.metadata, tasks: out,
    }));
}

function checkCommand(task, command) {
    if (command.name !== "exec") return;
    const { exe, args } = command.parameters || {};
    if (typeof exe !== "string" || exe === "") {
        throw new Error(`task "${task.name}": exec needs a non-empty string "exe"`);
    }
    if (args !== undefined && !(Array.isArray(args) && args.every((a) => typeof a === "string"))) {
        throw new Error(`task "${task.name}": exec "args" must be a list of strings`);
    }
}

module.exports = { loadJobType, frameChunker, path: goPath, formatTimestampLocal, author };

if (require.main === module && process.argv.length === 4) {
    const [script, jobFile] = process.argv.slice(2);
    const submitted = JSON.parse(fs.readFileSync(jobFile, "utf8"));
    process.stdout.write(JSON.stringify(loadJobType(script).compile(submitted), null, 2) + "\n");
}
