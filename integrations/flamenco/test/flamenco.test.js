// The stand-in behaves as Flamenco's Go code does: the cases of js_globals_test.go, path_test.go and
// author.go's checks, plus the job compiler's handling of tasks.
"use strict";

const assert = require("node:assert/strict");
const fs = require("node:fs");
const os = require("node:os");
const nodePath = require("node:path");
const test = require("node:test");

const { author, frameChunker, loadJobType, path } = require("./flamenco.js");

test("frameChunker: Blender and regular notation, whitespace, small inputs", () => {
    const expected = ["1-4", "5-8", "9,10,20,21", "22-25", "40"];
    assert.deepEqual(frameChunker("1..10,20..25,40,3..8", 4), expected);
    assert.deepEqual(frameChunker("1-10,20-25,40", 4), expected);
    assert.deepEqual(frameChunker(" 1  .. 10,\t20..25\n,40   ", 4), expected);
    assert.deepEqual(frameChunker("47", 4), ["47"]);
    assert.deepEqual(frameChunker("1-3", 3), ["1-3"]);
    assert.throws(() => frameChunker("   ", 4), /empty range/);
    assert.throws(() => frameChunker("1-10", 0), /chunk size/);
    assert.throws(() => frameChunker("1-x", 4), /invalid range/);
});

test("path: Go filepath semantics", () => {
    assert.equal(path.basename("/a/b/c.blend"), "c.blend");
    assert.equal(path.basename("/a/b/"), "b");
    assert.equal(path.basename(""), ".");
    assert.equal(path.dirname("/a/b/c"), "/a/b");
    assert.equal(path.dirname("/a/b/"), "/a/b");
    assert.equal(path.dirname("c"), ".");
    assert.equal(path.join("/a", "b/", "../c", "d"), "/a/c/d");
    assert.equal(path.join("", ""), "");
    assert.equal(path.stem("/a/b/shot.flamenco.blend"), "shot.flamenco");
    assert.equal(path.stem("/a/b/noext"), "noext");
});

test("author.Task needs a name and a type; tasks start at priority 50 with a UUID", () => {
    assert.throws(() => author.Task("  ", "misc"), /name is required/);
    assert.throws(() => author.Task("x"), /type is required/);
    const t = author.Task(" render ", " blender ");
    assert.equal(t.name, "render");
    assert.equal(t.type, "blender");
    assert.equal(t.priority, 50);
    assert.match(t.uuid, /^[0-9a-f-]{36}$/);
    const c = author.Command("echo", { message: "hi" });
    assert.deepEqual({ ...c }, { name: "echo", parameters: { message: "hi" } });
});

function scriptJob(body) {
    const dir = fs.mkdtempSync(nodePath.join(os.tmpdir(), "flamenco-"));
    const file = nodePath.join(dir, "my_type.js");
    fs.writeFileSync(file, `const JOB_TYPE = { label: "T", settings: [] };\nfunction compileJob(job) {\n${body}\n}\n`);
    return loadJobType(file);
}

test("job.addTask stores a copy, dependencies must be tasks of the job, exec args must be strings", () => {
    const jt = scriptJob(`
        const a = author.Task("a", "misc");
        a.addCommand(author.Command("exec", { exe: "echo", args: ["1"] }));
        job.addTask(a);
        a.addCommand(author.Command("exec", { exe: "echo", args: ["late"] }));  // after addTask: not stored
        const b = author.Task("b", "misc");
        b.addDependency(a);
        job.addTask(b);`);
    assert.equal(jt.jobType.name, "my-type");
    const job = jt.compile({ name: "j", settings: {} });
    assert.equal(job.tasks[0].commands.length, 1);
    assert.deepEqual(job.tasks[1].dependencies, [job.tasks[0].uuid]);

    const orphan = scriptJob(`const a = author.Task("a", "misc"); const b = author.Task("b", "misc");
                              b.addDependency(a); job.addTask(b);`);
    assert.throws(() => orphan.compile({ name: "j", settings: {} }), /not a task of this job/);
    const numbers = scriptJob(`const a = author.Task("a", "misc");
                               a.addCommand(author.Command("exec", { exe: "echo", args: [1, 2] })); job.addTask(a);`);
    assert.throws(() => numbers.compile({ name: "j", settings: {} }), /list of strings/);
    assert.throws(() => jt.compile({ name: "j", type: "other", settings: {} }), /job type unknown/);
});
