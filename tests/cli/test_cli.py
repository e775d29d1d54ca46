#!/usr/bin/env python3
"""End-to-end tests of the kvbench executable: exit codes, one-line errors, reports that
validate against the schema (and broken ones that do not).

Run by ctest; KVBENCH points at the executable."""
import copy
import json
import os
import pathlib
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = pathlib.Path(__file__).resolve().parents[2]
KVBENCH = os.environ.get("KVBENCH", str(ROOT / "build" / "kvbench"))
VALIDATE = [sys.executable, str(ROOT / "scripts" / "validate_report.py")]

# Small enough to run in about a second; min_llc_multiple 0 accepts in-cache points.
TINY_SUITE = {"name": "kernels", "contexts": [256, 512], "kv_heads": [1, 2], "head_dim": 64,
              "warmup": 1, "repeats": 3, "min_llc_multiple": 0}


def cuda_visible():
    return "CUDA device: none visible" not in kvbench("version").stdout


def kvbench(*args, cwd=None, env=None):
    # Generous: the workloads acceptance run takes ~85 s on a quiet 2-core machine and over
    # 300 s when other jobs share it; a timeout here should mean a hang, not a busy machine.
    return subprocess.run([KVBENCH, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=900)


class CliCase(unittest.TestCase):
    """Helpers shared by the CLI test classes (no tests of its own)."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="kvbench_cli_")
        self.dir = pathlib.Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def write_config(self, config, name="cfg.json"):
        path = self.dir / name
        path.write_text(config if isinstance(config, str) else json.dumps(config))
        return str(path)

    def run_ok(self, config, *extra):
        res = kvbench("run", "--config", self.write_config(config), "--out", str(self.dir / "out"),
                      "--log-level", "warn", *extra)
        return res

    def run_on_path(self, config, path):
        """run_ok with KVBENCH_PAGED_PATH=kernels ("kernels": the paged cache's GPU path on the
        CPU) or without it ("cpu"), the environment restored afterwards."""
        old = os.environ.pop("KVBENCH_PAGED_PATH", None)
        if path == "kernels":
            os.environ["KVBENCH_PAGED_PATH"] = "kernels"
        try:
            return self.run_ok(config)
        finally:
            os.environ.pop("KVBENCH_PAGED_PATH", None)
            if old is not None:
                os.environ["KVBENCH_PAGED_PATH"] = old

    def assert_paged_kl_like_reference(self, kl, names):
        """Each method's fidelity KL with attention "paged" equals the reference backend's."""
        for name in names:
            self.assertGreater(kl["paged", name], 0)
            self.assertAlmostEqual(kl["paged", name], kl["reference", name],
                                   delta=1e-4 * kl["reference", name] + 1e-9, msg=name)

    def report_from(self, res):
        lines = [l for l in res.stdout.splitlines() if l.startswith("report: ")]
        self.assertEqual(len(lines), 1, res.stdout + res.stderr)
        path = pathlib.Path(lines[0][len("report: "):])
        self.assertTrue(path.is_file())
        return path, json.loads(path.read_text())

    def assert_one_line_error(self, res, code, fragment):
        self.assertEqual(res.returncode, code, res.stdout + res.stderr)
        lines = res.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, res.stderr)
        self.assertIn(fragment, lines[0])



class CliTest(CliCase):
    # --- version -----------------------------------------------------------------------
    def test_version_reports_blas_threads_and_cuda(self):
        res = kvbench("version")
        self.assertEqual(res.returncode, 0, res.stderr)
        out = res.stdout
        self.assertRegex(out, r"^kvbench \d+\.\d+\.\d+ \(git \S+\)")
        self.assertRegex(out, r"\nlibtorch: \d+\.\d+")
        self.assertRegex(out, r"\nBLAS: \S+")
        self.assertRegex(out, r"\nthreads: \d+ \(of \d+ cores\)")
        self.assertRegex(out, r"\nCUDA support: (built|not built)")
        self.assertRegex(out, r"\nCUDA device: ")
        res1 = kvbench("version", "--threads", "1")
        self.assertIn("threads: 1 (of", res1.stdout)

    def test_list_prints_methods_suites_and_defaults(self):
        res = kvbench("list")
        self.assertEqual(res.returncode, 0)
        self.assertIn("full - ", res.stdout)
        self.assertIn("palu - ", res.stdout)
        self.assertIn("kvproj - ", res.stdout)
        self.assertIn("kernels - ", res.stdout)
        self.assertIn("repeats: integer in [1, 100000], default 20", res.stdout)
        self.assertIn("tasks:", res.stdout)
        self.assertIn("niah_multikey", res.stdout)
        tasks = kvbench("list", "tasks")
        self.assertEqual(tasks.returncode, 0)
        self.assertNotIn("methods:", tasks.stdout)
        self.assertIn("target_tokens: integer", tasks.stdout)
        self.assertEqual(kvbench("list", "bogus").returncode, 2)

    # --- shards and resume ---------------------------------------------------------------
    def test_shards_are_disjoint_and_complete(self):
        cfg = {"suites": [dict(TINY_SUITE, repeats=r) for r in (2, 3, 4)], "threads": 1,
               "methods": [{"name": "full"}, {"name": "int8"}]}
        whole = self.run_ok(cfg, "--dry-run")
        self.assertEqual(whole.returncode, 0, whole.stderr)
        ids = set()
        for i in range(3):
            res = kvbench("run", "--config", self.write_config(cfg), "--out", str(self.dir / f"s{i}"),
                          "--log-level", "warn", "--shard", f"{i}/3")
            self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
            _, report = self.report_from(res)
            part = {c["id"] for c in report["cells"]}
            self.assertFalse(part & ids, "shards overlap")
            ids |= part
        self.assertEqual(len(ids), 6)
        self.assert_one_line_error(
            kvbench("run", "--config", self.write_config(cfg), "--shard", "3/3"), 2, "--shard")
        # An empty value (a job array's unset $SHARD) is refused, not taken as "every cell".
        self.assert_one_line_error(
            kvbench("run", "--config", self.write_config(cfg), "--shard", ""), 2, "--shard")

    def test_resume_reuses_ok_cells_and_reruns_failed_ones(self):
        cfg = {"suites": [TINY_SUITE, {"name": "latency", "prompt_tokens": 4, "new_tokens": 2,
                                       "repeats": 1, "warmup": 0}],
               "model": {"path": str(self.dir / "absent")},  # the latency cell fails
               "threads": 1}
        first = self.run_ok(cfg)
        self.assertEqual(first.returncode, 1)
        _, r1 = self.report_from(first)
        done = {c["id"]: c for c in r1["cells"]}
        # A file whose header has a field of the wrong type is skipped, not fatal.
        (self.dir / "out" / "0-header.json").write_text('{"schema": 5, "cells": []}')
        second = self.run_ok(cfg, "--resume")
        self.assertEqual(second.returncode, 1, second.stdout + second.stderr)
        self.assertIn("resume: skipping malformed report (type must be string", second.stderr)
        self.assertIn("1 reused from earlier reports", second.stdout)
        path2, r2 = self.report_from(second)
        # The finished report is continued (its failed cell ran again), not joined by a second.
        self.assertEqual(path2, self.report_from(first)[0])
        self.assertEqual(r2["created"], r1["created"])
        self.assertIn(f"(run now), 1 reused from earlier reports; {len(r2['cells'])} in the report",
                      second.stdout)
        self.assertEqual([c["id"] for c in r2["cells"]], [c["id"] for c in r1["cells"]])
        kernels = r2["cells"][0]
        self.assertEqual(kernels["status"], "ok")
        self.assertIn("resumed_from", kernels)
        self.assertEqual(kernels["measured_by"], r1["kvbench"]["git_revision"])
        self.assertNotIn("not by this build", second.stderr)
        self.assertEqual(kernels["records"], done[kernels["id"]]["records"])  # reused, not re-run
        self.assertEqual(r2["cells"][1]["status"], "failed")                # failed: ran again
        self.assertNotEqual(r2["cells"][1]["started"], done[r2["cells"][1]["id"]]["started"])
        self.assertEqual(r2["totals"], {"cells": 2, "failed": 1})
        self.assertEqual(subprocess.run([*VALIDATE, str(path2)]).returncode, 0)
        # Cells another build measured keep its name, and a resume by this build says so.
        r2["kvbench"]["git_revision"] = "0ldb0ld"
        for c in r2["cells"]:
            c.pop("measured_by", None)
        path2.write_text(json.dumps(r2))
        third = self.run_ok(cfg, "--resume")
        self.assertIn("resume: 1 reused cell(s) were measured by kvbench 0ldb0ld, not by this build",
                      third.stderr)
        _, r3 = self.report_from(third)
        self.assertEqual(r3["cells"][0]["measured_by"], "0ldb0ld")
        # Another run seed gives the cells the same ids (comparable across seeds) but other
        # inputs: nothing measured with seed 0 is reused.
        fourth = self.run_ok(dict(cfg, seed=1), "--resume")
        self.assertNotIn("reused from earlier reports", fourth.stdout)
        _, r4 = self.report_from(fourth)
        self.assertEqual([c["id"] for c in r4["cells"]], [c["id"] for c in r1["cells"]])
        self.assertEqual([c for c in r4["cells"] if "resumed_from" in c], [])

    METHODS_SIX = ["full", "int8", "int4", "fp8", "kivi-2", "kivi-4"]

    def start_six_cell_run(self, stderr):
        """A run of six cells in the background: its process, output directory and config."""
        cfg = {"suites": [TINY_SUITE], "methods": [{"name": m} for m in self.METHODS_SIX],
               "threads": 1}
        out = self.dir / "out"
        run = [KVBENCH, "run", "--config", self.write_config(cfg), "--out", str(out),
               "--log-level", "warn"]
        proc = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        return proc, out, cfg

    @staticmethod
    def wait_for_partial(proc, out):
        """The first partial report the run writes, or None once it ends without one."""
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            for f in out.glob("*.json"):  # written atomically: never half a file
                if "partial" in json.loads(f.read_text()):
                    return f
        return None

    def test_a_stopped_run_says_how_to_finish_and_leaves_no_temporary_file(self):
        proc, out, _ = self.start_six_cell_run(subprocess.PIPE)
        try:
            self.wait_for_partial(proc, out)
            # The run marks its report as on disk just after the file appears (the rename, then
            # the flag its stop message reads): a signal between the two says no report was
            # written (seen once under CI load, 2026-12-06). Let it get past that first.
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        if proc.returncode == 0:
            self.skipTest("the run finished before the signal")
        self.assertEqual(proc.returncode, -signal.SIGTERM, err)  # the signal's own status
        self.assertIn("kvbench: stopped by a signal; the report holds every cell finished", err)
        self.assertIn("--resume runs the rest", err)
        self.assertEqual([f.name for f in out.iterdir() if ".tmp." in f.name], [])

    def test_a_run_stopped_before_its_first_cell_promises_no_report(self):
        # One long cell: the signal comes once the run has started it (its plan line is out).
        slow = dict(TINY_SUITE, contexts=[65536], kv_heads=[8], repeats=100000)
        out = self.dir / "out"
        run = [KVBENCH, "run", "--config", self.write_config({"suites": [slow], "threads": 1}),
               "--out", str(out)]
        proc = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        try:
            for line in proc.stderr:
                if "cell(s), 1 thread(s)" in line:
                    break
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        self.assertEqual(proc.returncode, -signal.SIGTERM, err)
        self.assertIn("stopped by a signal before a cell of this run finished; no report of it "
                      "was written", err)
        self.assertEqual(list(out.iterdir()), [])

    def test_a_killed_run_leaves_a_partial_report_that_resume_finishes(self):
        methods = self.METHODS_SIX
        proc, out, cfg = self.start_six_cell_run(subprocess.DEVNULL)
        try:
            partial = self.wait_for_partial(proc, out)
        finally:
            proc.kill()
            proc.wait()
        self.assertIsNotNone(partial, "no partial report before the run ended")
        r1 = json.loads(partial.read_text())  # the last one written before the kill
        done = r1["partial"]["cells_done"]
        self.assertEqual(r1["partial"]["cells_planned"], len(methods))
        self.assertTrue(1 <= done < len(methods), r1["partial"])
        self.assertEqual(r1["totals"], {"cells": done, "failed": 0})
        self.assertEqual([c["method"]["name"] for c in r1["cells"]], methods[:done])
        self.assertEqual(subprocess.run([*VALIDATE, str(partial)]).returncode, 0)
        rep = kvbench("report", str(partial))
        self.assertEqual(rep.returncode, 0, rep.stderr)
        self.assertIn(f"partial report ({done} of {len(methods)} cells)", rep.stderr)
        stopped = self.dir / "stopped.json"  # the partial report as the kill left it
        shutil.copy(partial, stopped)

        res = self.run_ok(cfg, "--resume")
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        self.assertIn(f"{done} reused from earlier reports", res.stdout)
        path2, r2 = self.report_from(res)
        # The resumed run continued the partial report: one report in the directory.
        self.assertEqual(path2, partial)
        self.assertEqual(list(out.glob("*.json")), [partial])
        self.assertNotIn("partial", r2)
        self.assertEqual([c["method"]["name"] for c in r2["cells"]], methods)
        self.assertEqual(sum("resumed_from" in c for c in r2["cells"]), done)
        self.assertEqual(r2["cells"][0]["records"], r1["cells"][0]["records"])
        self.assertEqual(subprocess.run([*VALIDATE, str(path2)]).returncode, 0)
        # Resuming the finished run (a CI retry step) runs nothing and leaves the file alone.
        before = path2.read_bytes()
        res = self.run_ok(cfg, "--resume")
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        self.assertIn(f"nothing to run: every cell is ok in {path2}", res.stdout)
        self.assertEqual(list(out.glob("*.json")), [partial])
        self.assertEqual(path2.read_bytes(), before)
        # A CI gate never passes a run that stopped: compare refuses a partial report.
        cmp = kvbench("compare", str(path2), str(stopped))
        self.assertEqual(cmp.returncode, 2, cmp.stdout + cmp.stderr)
        self.assertIn("partial report", cmp.stderr)
        # The finished report says nothing about a stopped run.
        rep = kvbench("report", str(path2))
        self.assertEqual(rep.returncode, 0, rep.stderr)
        self.assertNotIn("partial report", rep.stderr)
        # A resumed run of another config (here another name: the cells and their ids are the
        # same) reuses the cells but writes its own file; merging both files says nothing
        # about a stopped run or duplicates.
        other = self.dir / "other"
        other.mkdir()
        shutil.copy(stopped, other / stopped.name)
        res = kvbench("run", "--config", self.write_config(cfg), "--out", str(other), "--resume",
                      "--set", "name=renamed", "--log-level", "warn")
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        path3, _ = self.report_from(res)
        self.assertNotEqual(path3, other / stopped.name)
        rep = kvbench("report", str(other / stopped.name), str(path3))
        self.assertEqual(rep.returncode, 0, rep.stderr)
        self.assertNotIn("partial report", rep.stderr)
        self.assertNotIn("appears in", rep.stderr)
        # One file named twice is read once, not merged with itself cell by cell.
        rep = kvbench("report", str(path3), str(path3))
        self.assertEqual(rep.returncode, 0, rep.stderr)
        self.assertIn("given twice; read once", rep.stderr)
        self.assertNotIn("appears in", rep.stderr)

    def test_prompts_past_the_models_context_are_warned_about_in_the_report(self):
        cfg = {"model": {"preset": "tiny-llama", "random_init": True}, "threads": 2,
               "suites": [{"name": "latency", "prompt_tokens": 4096, "new_tokens": 2,
                           "repeats": 1, "warmup": 0}]}
        _, report = self.report_from(self.run_ok(cfg))
        warnings = report["cells"][0]["warnings"]
        self.assertTrue(any("max_position_embeddings (4096)" in w for w in warnings), warnings)
        # (A CPU run records the machine's read speed at both ends of each cell.)
        probe = report["cells"][0]["machine_probe"]
        self.assertEqual(probe["read_bytes"], 16 << 20)
        self.assertGreater(probe["read_gbps_before"], 0)
        self.assertGreater(probe["read_gbps_after"], 0)
        # 4095 + 2 tokens take positions 0 .. 4095 (the last new token is sampled, never fed):
        # within the context, though the tokens count 4097.
        cfg["suites"][0]["prompt_tokens"] = 4095
        _, report = self.report_from(self.run_ok(cfg))
        self.assertFalse(any("max_position" in w for w in report["cells"][0]["warnings"]))

    def test_quest_with_every_layer_dense_is_warned_about(self):
        # Quest never evicts, so "evicted nothing" cannot flag it: dense_layers covering every
        # layer of the model means the cell measured the full cache.
        cfg = {"model": {"preset": "tiny-llama", "random_init": True}, "threads": 2,
               "methods": [{"name": "quest", "budget": 32, "dense_layers": 4},
                           {"name": "quest", "budget": 32, "dense_layers": 1}],
               "suites": [{"name": "latency", "prompt_tokens": 64, "new_tokens": 2,
                           "repeats": 1, "warmup": 0}]}
        _, report = self.report_from(self.run_ok(cfg))
        warned = [any("covers all of the model's 4 layers" in w for w in c["warnings"])
                  for c in report["cells"]]
        self.assertEqual(warned, [True, False], report["cells"])

    def test_an_unwritable_output_dir_fails_before_any_cell(self):
        blocker = self.dir / "file"
        blocker.write_text("not a directory")
        cfg = self.write_config({"suites": [TINY_SUITE], "threads": 1})
        for extra in ([], ["--dry-run"]):
            res = kvbench("run", "--config", cfg, "--out", str(blocker), *extra)
            self.assert_one_line_error(res, 2, "output.dir")
            self.assertIn("directory", res.stderr)
        for extra in ([], ["--dry-run"]):
            res = kvbench("run", "--config", cfg, "--out", str(blocker / "sub"), *extra)
            self.assert_one_line_error(res, 2, "output.dir")
        # A missing directory the real run could not create is refused by the dry run too
        # (/proc takes no new directory, even from root), which creates nothing.
        res = kvbench("run", "--config", cfg, "--out", "/proc/kvbench-x/y", "--dry-run")
        self.assert_one_line_error(res, 2, "cannot create '/proc/kvbench-x/y'")
        res = kvbench("run", "--config", cfg, "--out", str(self.dir / "new" / "sub"),
                      "--dry-run")
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertFalse((self.dir / "new").exists())
        # A directory that exists but takes no file, even for root (access() says yes): sysfs.
        if pathlib.Path("/sys/kernel").is_dir():
            res = kvbench("run", "--config", cfg, "--out", "/sys/kernel")
            self.assert_one_line_error(res, 2, "output.dir")
            self.assertIn("cannot write reports into '/sys/kernel'", res.stderr)

    def test_shards_started_together_write_separate_reports(self):
        # Started in the same second they pick the same file name; the first write claims it
        # exclusively and the other moves on to "-2" (no report overwrites another).
        methods = ["full", "int8", "int4", "fp8"]
        cfg = {"suites": [TINY_SUITE], "methods": [{"name": m} for m in methods], "threads": 1}
        path = self.write_config(cfg)
        out = self.dir / "out"
        procs = [subprocess.Popen([KVBENCH, "run", "--config", path, "--out", str(out),
                                   "--shard", f"{i}/2", "--log-level", "warn"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
        reports = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            self.assertEqual(p.returncode, 0, stdout + stderr)
            reports += [l[len("report: "):] for l in stdout.splitlines()
                        if l.startswith("report: ")]
        self.assertEqual(len(set(reports)), 2, reports)
        self.assertEqual(sorted(f.name for f in out.glob("*.json")),
                         sorted(pathlib.Path(r).name for r in reports))
        names = [c["method"]["name"] for r in reports
                 for c in json.loads(pathlib.Path(r).read_text())["cells"]]
        self.assertEqual(sorted(names), sorted(methods))

    def test_grid_runs_every_combination_and_loads_each_model_once(self):
        cfg = {"model": {"preset": "tiny-llama", "random_init": True}, "threads": 1,
               "suites": [{"name": "latency", "prompt_tokens": 4, "new_tokens": 2, "repeats": 1,
                           "warmup": 0}],
               "grid": {"model.preset": ["tiny-llama", "tiny-qwen3"],
                        "suites.0.prompt_tokens": [4, 6]}}
        res = kvbench("run", "--config", self.write_config(cfg, "sweep.json"),
                      "--out", str(self.dir / "out"), "--log-level", "warn")
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        paths = [l[len("report: "):] for l in res.stdout.splitlines() if l.startswith("report: ")]
        self.assertEqual(len(paths), 4)
        seen = set()
        for p in paths:
            r = json.loads(pathlib.Path(p).read_text())
            seen.add((r["config"]["model"]["preset"], r["config"]["suites"][0]["prompt_tokens"]))
        self.assertEqual(len(seen), 4)
        names = sorted(json.loads(pathlib.Path(p).read_text())["config"]["name"] for p in paths)
        self.assertEqual(names, [f"sweep-g{i}" for i in range(4)])
        # Each random-weight model is built (and warned about) once, not once per run.
        self.assertEqual(res.stderr.count("random weights"), 2, res.stderr)
        self.assertEqual(kvbench("validate", "--config", self.write_config(cfg, "sweep.json")).returncode, 0)
        # A named config's runs take its name, each with its index.
        res = kvbench("validate", "--config", self.write_config(dict(cfg, name="mine"), "x.json"))
        self.assertEqual(res.returncode, 0, res.stderr)
        for i in range(4):
            self.assertIn(f"mine-g{i}", res.stdout + res.stderr)

    # --- run ---------------------------------------------------------------------------
    def test_run_writes_a_report_that_validates(self):
        res = self.run_ok({"suites": [TINY_SUITE], "threads": 1, "seed": 9})
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("1 of 1 cell(s) ok", res.stdout)
        self.assertIn("GB/s", res.stdout)  # the summary table
        path, report = self.report_from(res)
        self.assertEqual(report["schema"], "kvbench.report")
        self.assertEqual(report["config"]["seed"], 9)
        self.assertEqual(report["environment"]["threads"], 1)
        self.assertTrue(report["environment"]["blas"]["name"])
        cell = report["cells"][0]
        self.assertEqual(cell["status"], "ok")
        self.assertEqual(len([r for r in cell["records"] if r["kind"] == "decode_attention"]), 4)
        for r in cell["records"]:
            self.assertEqual(len(r["samples_s"]), 3)
        check = subprocess.run(VALIDATE + [str(path)], capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        # No temporary file is left next to the report.
        self.assertEqual([p.name for p in path.parent.iterdir()], [path.name])

    def test_a_kernels_cell_of_a_policy_evicting_during_decode_validates(self):
        """Its retained_decode records (the method's own steps) keep their raw samples too."""
        res = self.run_ok({"suites": [dict(TINY_SUITE, kv_heads=[1])], "threads": 1,
                           "methods": [{"name": "streamingllm", "sinks": 4, "window": 64}]})
        self.assertEqual(res.returncode, 0, res.stderr)
        path, report = self.report_from(res)
        records = [r for r in report["cells"][0]["records"] if r["kind"] == "retained_decode"]
        self.assertEqual(len(records), 2)
        for r in records:
            self.assertEqual(len(r["samples_s"]), 3)
            self.assertEqual(r["time_s"]["median"], sorted(r["samples_s"])[1])
        check = subprocess.run(VALIDATE + [str(path)], capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)

    def test_report_records_what_version_prints(self):
        res = self.run_ok({"suites": [TINY_SUITE]})
        _, report = self.report_from(res)
        version = kvbench("version").stdout
        self.assertIn(f"BLAS: {report['environment']['blas']['name']}", version)
        self.assertIn(f"threads: {report['environment']['threads']} (of", version)

    def test_broken_reports_fail_validation(self):
        path, report = self.report_from(self.run_ok({"suites": [TINY_SUITE]}))
        breakers = {
            "no environment": lambda r: r.pop("environment"),
            "no cell status": lambda r: r["cells"][0].pop("status"),
            "no raw samples": lambda r: r["cells"][0]["records"][1].pop("samples_s"),
            "bad time": lambda r: r.__setitem__("created", "yesterday"),
            "failed without error": lambda r: r["cells"][0].__setitem__("status", "failed"),
            "wrong schema version": lambda r: r.__setitem__("schema_version", 99),
        }
        for name, breaker in breakers.items():
            with self.subTest(name):
                broken = copy.deepcopy(report)
                breaker(broken)
                bad = self.dir / "broken.json"
                bad.write_text(json.dumps(broken))
                check = subprocess.run(VALIDATE + [str(bad)], capture_output=True, text=True)
                self.assertEqual(check.returncode, 1, name + ": " + check.stdout)

    def test_failing_cell_is_recorded_and_others_run(self):
        huge = dict(TINY_SUITE, contexts=[16777216], kv_heads=[256])
        res = self.run_ok({"suites": [huge, TINY_SUITE]})
        self.assertEqual(res.returncode, 1, res.stdout + res.stderr)
        self.assertIn("1 of 2 cell(s) ok, 1 failed", res.stdout)
        path, report = self.report_from(res)
        failed, ok = report["cells"]
        self.assertEqual(failed["status"], "failed")
        self.assertIn("needs 1.00 TiB", failed["error"])  # 2 x 256 heads x 2^24 x 64 x 2 B (fp16)
        self.assertEqual(ok["status"], "ok")
        self.assertEqual(report["totals"], {"cells": 2, "failed": 1})
        check = subprocess.run(VALIDATE + [str(path)], capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout)

    def test_dry_run_lists_cells_and_writes_nothing(self):
        res = self.run_ok({"suites": [TINY_SUITE, dict(TINY_SUITE, repeats=4)]}, "--dry-run")
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertEqual(res.stdout.count("kernels.full."), 2)
        self.assertFalse((self.dir / "out").exists())

    def test_the_report_names_the_visible_cuda_devices(self):
        cfg = self.write_config({"suites": [dict(TINY_SUITE, contexts=[256], kv_heads=[1])]})
        for visible, expected in (("3", "3"), (None, None)):
            env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
            if visible is not None:
                env["CUDA_VISIBLE_DEVICES"] = visible
            res = kvbench("run", "--config", cfg, "--out", str(self.dir / str(visible)),
                          "--log-level", "warn", env=env)
            self.assertEqual(res.returncode, 0, res.stderr)
            _, report = self.report_from(res)
            self.assertIn("visible_devices", report["environment"]["cuda"])
            self.assertEqual(report["environment"]["cuda"]["visible_devices"], expected)

    def test_set_overrides_reach_the_report(self):
        res = self.run_ok({"suites": [TINY_SUITE]}, "--set", "seed=77",
                          "--set", "suites.0.repeats=2", "--set", "name=renamed")
        self.assertEqual(res.returncode, 0, res.stderr)
        path, report = self.report_from(res)
        self.assertEqual(report["config"]["seed"], 77)
        self.assertEqual(report["config"]["suites"][0]["repeats"], 2)
        self.assertTrue(path.name.startswith("renamed-"))

    # --- errors: one line, naming the key, exit code 2 ------------------------------------
    def test_config_errors_are_one_line_with_the_key_path(self):
        cases = [
            ('{"suites": [{"name": "kernels"}], "threads": 0}',
             'config: threads: expected integer in [1, 4096] or "auto", got 0'),
            ('{"suites": [{"name": "kernels"}], "thread": 2}',
             "config: thread: unknown key (did you mean 'threads'?)"),
            ('{"suites": [{"name": "kernels", "repeats": "many"}]}',
             'config: suites[0].repeats: expected integer in [1, 100000], got "many"'),
            ('{"suites": [{"name": "kernels"}],\n "seed": ,\n}', "cfg.json:2:10: invalid JSON"),
            ('{"suites": [{"name": "kernels"}], "methods": [{"name": "kivi"}]}',
             "config: methods[0].name: unknown method 'kivi'"),
            ('{"suites": [{"name": "kernels"}], "device": "cuda"}',
             'config: device: "cuda" requested but no CUDA device is visible'),
            ('{"suites": [{"name": "kernels"}], "grid": {"device": ["cpu", "cuda"]}}',
             '; use "cpu" (in grid point {"device":"cuda"})'),
            # Parameters that contradict each other, also inside a retention method's codec.
            ('{"suites": [{"name": "kernels"}], "methods": [{"name": "kivi-2", "residual": 40}]}',
             "config: methods[0]: kivi: residual (40) must be a positive multiple of group"),
            ('{"suites": [{"name": "kernels"}], "methods": [{"name": "streamingllm",'
             ' "codec": {"name": "kivi-2", "residual": 40}}]}',
             "config: methods[0].codec: kivi: residual (40)"),
            ('{"suites": [{"name": "kernels"}], "methods": [{"name": "quest", "codec": "kivi-2"}]}',
             "config: methods[0].codec: 'quest' selects tokens at every decode step"),
            # Rules across a suite's keys, checked before any model is loaded.
            ('{"suites": [{"name": "accuracy"}]}',
             "config: suites[0]: accuracy: give exactly one of task and data_file"),
            ('{"suites": [{"name": "predictor", "batch": [1]}]}',
             "config: suites[0].batch: the grid needs at least two batches"),
            ('{"suites": [{"name": "serving", "rates": []}]}',
             "config: suites[0]: serving: rates must list at least one arrival rate"),
            ('{"suites": [{"name": "fidelity", "text": "a", "text_file": "b"}]}',
             "config: suites[0]: fidelity: give text or text_file, not both"),
            # Input files must exist before any cell runs, with the key and where it looked.
            ('{"suites": [{"name": "accuracy", "data_file": "nope.jsonl"}]}',
             "config: suites[0].data_file: no such file: 'nope.jsonl' (relative to the working"),
            ('{"suites": [{"name": "accuracy", "data_file": "/", "templates_dir": "/nodir"}]}',
             "config: suites[0].data_file: not a file: '/'"),
            # A bad value from a sweep names the combination it came from.
            ('{"suites": [{"name": "kernels"}], "grid": {"suites.0.repeats": [1, 0]}}',
             'got 0 (in grid point {"suites.0.repeats":0})'),
            # A later grid run's cells are checked before the first one measures anything.
            ('{"suites": [{"name": "kernels"}], "grid": {"methods": [[{"name": "int4"}],'
             ' [{"name": "palu"}]]}}',
             '(in grid point {"methods":[{"name":"palu"}]})'),
            ('{"suites": [{"name": "kernels"}], "gird": {}}',
             "config: gird: unknown key (did you mean 'grid'?)"),
            # Input no config holds: nesting past 64 levels (printing it overflowed the stack),
            # a huge value (the message shows its start), a NUL (it cut paths short).
            ('{"suites": [{"name": "kernels", "kv_heads": ' + "[" * 100000 + "]" * 100000 + "}]}",
             "cfg.json: values nested more than 64 levels deep"),
            ('{"suites": [{"name": "kernels", "kv_heads": "' + "x" * 1000000 + '"}]}',
             'got "xxxxxxxx'),
            ('{"model": {"path": "m\\u0000x"}, "suites": [{"name": "latency"}]}',
             'config: model.path: contains a NUL character (\\u0000), got "m\\u0000x"'),
            ('{"suites": [{"name": "kernels"}], "methods": [{"name": "full+int8"}]}',
             "'full' is a codec, not a retention method; both are codecs: give one alone ('int8'),"
             " or after a retention method, as in 'snapkv+int8'"),
            # A composed name the wrong way round, and model-free rules of two more suites.
            ('{"suites": [{"name": "kernels"}], "methods": [{"name": "int8+snapkv"}]}',
             "config: methods[0].name: 'int8+snapkv': 'int8' is a codec, not a retention method;"
             " the retention method comes first, as in 'snapkv+int8'"),
            ('{"suites": [{"name": "throughput", "batch": [2, 1, 2]}]}',
             "config: suites[0].batch: lists 2 twice (each value is a point of the grid"),
            ('{"suites": [{"name": "kernels", "contexts": [1024, 2048, 1024]}]}',
             "config: suites[0].contexts: lists 1024 twice (each value is a point of the grid"),
            # Found as the cells are listed: before session 63 a run of one config made its
            # output directory first.
            ('{"suites": [{"name": "kernels"}], "methods": [{"name": "fp8"}, {"name": "fp8", "scale_value": 1}]}',
             "are identical; remove one"),
            ('{"suites": [{"name": "throughput", "capacity_context": 4, "capacity_new_tokens": 8}]}',
             "config: suites[0].capacity_context: must be >= capacity_new_tokens (8) when set"),
            ('{"suites": [{"name": "predictor", "batch": [1, 2], "heldout_batch": [100]}]}',
             "config: suites[0].heldout_batch: 100 lies outside the grid's range [1, 2]"),
        ]
        for text, fragment in cases:
            with self.subTest(fragment):
                path = self.write_config(text)
                for cmd in ("validate", "run"):
                    args = [cmd, "--config", path] + (["--out", str(self.dir / "out")] if cmd == "run" else [])
                    res = kvbench(*args)
                    self.assert_one_line_error(res, 2, fragment)
                    self.assertLess(len(res.stderr), 1000)  # a value is shown by its start
        self.assertFalse((self.dir / "out").exists())

    def test_config_reference_lists_real_messages(self):
        """docs/config.md's "Real messages" block is exactly what validate prints for these
        configs, so the reference cannot drift from the code."""
        k = {"name": "kernels"}

        def cfg(**top):
            return {"suites": [k], **top}

        lat, thr = {"name": "latency"}, {"name": "throughput"}
        cases = [
            cfg(threads=0), cfg(thread=2), cfg(atention="cpu"), cfg(attention="fused"),
            {"suites": [{**k, "repeat": 3}]}, {"suites": [{**k, "dtype": "fp16"}]},
            {"suites": [{**k, "repeats": "many"}]}, {"suites": [{**k, "contexts": [1024, 0]}]},
            {"suites": [{**k, "head_dim": 96}]}, {"suites": [{"name": "kernel"}]},
            {"suites": [{**k, "llc_bytes": "32MiB"}]},
            {"suites": [{**lat, "new_token": 8}]}, {"suites": [{**lat, "new_tokens": 1}]},
            {"suites": [{**lat, "prompt_tokens": [128]}]}, {"suites": [{**thr, "batch": 4}]},
            {"suites": [{**thr, "batch": []}]}, {"suites": [{**thr, "prompt_tokens": [0]}]},
            cfg(methods=[{"name": "ful"}]), cfg(methods=[{"name": "int9"}]),
            cfg(methods=[{"name": 4}]), cfg(methods=[{"name": "int4", "group": 24}]),
            cfg(methods=[{"name": "int4", "group": "32"}]),
            cfg(methods=[{"name": "int4", "symetric": True}]),
            cfg(methods=[{"name": "int4", "symmetric": "yes"}]),
            cfg(methods=[{"name": "full", "group": 32}]), cfg(methods=[7]), cfg(methods=[]),
            cfg(model={"dtype": "fp16"}), cfg(model={"paht": "m"}),
            cfg(model={"preset": "tiny-lama", "path": "m"}), cfg(model={"preset": "tiny-llama"}),
            cfg(model={"random_init": True}),
            cfg(model={"preset": "tiny-llama", "random_init": True, "path": "m"}),
            cfg(model={"preset": "tiny-llama", "random_init": "yes"}),
            cfg(model={"preset": "tiny-llama", "path": "m", "seed": -1}),
            cfg(device="cuda"), cfg(seed=-1), {"threads": 2}, {"suites": []},
            {"suites": [k, k]}, cfg(methods=[{"name": "int4"}, {"name": "int4", "group": 32}]),
            [k],
        ]
        gpu = cuda_visible()  # then device "cuda" is valid and its line is not checked
        if gpu:
            cases.remove(cfg(device="cuda"))
        actual = []
        for i, config in enumerate(cases):
            path = self.write_config(config, f"case{i}.json")
            res = kvbench("validate", "--config", path)
            self.assertEqual(res.returncode, 2, res.stdout + res.stderr)
            lines = res.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, res.stderr)
            actual.append(lines[0].split("[error] ", 1)[-1])
        configs = self.dir / "configs"
        configs.mkdir()
        (configs / "x.json").write_text('{"suites": [{"name": "kernels"}],\n "seed": 1,\n "x": ,}')
        for name in ("configs/x.json", "configs/none.json"):
            res = kvbench("validate", "--config", name, cwd=self.dir)
            self.assertEqual(res.returncode, 2, res.stderr)
            actual.append(res.stderr.strip().splitlines()[-1].split("[error] ", 1)[-1])
        doc = (ROOT / "docs" / "config.md").read_text()
        block = doc.split("Real messages (`kvbench validate`", 1)[1].split("```\n", 2)[1]
        documented = [l for l in block.splitlines() if not (gpu and '"cuda" requested' in l)]
        # Why no device is visible depends on the machine (no driver, no device, no CUDA build).
        why = re.compile(r"no CUDA device is visible \(.*\)")
        documented = [why.sub("no CUDA device is visible (...)", l) for l in documented]
        actual = [why.sub("no CUDA device is visible (...)", l) for l in actual]
        self.assertEqual(documented, actual, "\n".join(["docs/config.md should read:"] + actual))

    def test_config_reference_lists_every_suite_parameter_with_its_default(self):
        """Each suite's table in docs/config.md names every parameter `kvbench list suites`
        prints, and no other, with the default the code has (numbers compared as numbers; a
        row of several keys gives their defaults in order)."""
        out = kvbench("list", "suites")
        self.assertEqual(out.returncode, 0, out.stderr)
        suites, current = {}, None
        for line in out.stdout.splitlines():
            if m := re.match(r"^  (\w+) - ", line):
                current = suites.setdefault(m.group(1), {})
            elif (m := re.match(r"^    (\w+): .*, default (.*)$", line)) and current is not None:
                current[m.group(1)] = m.group(2)
        self.assertGreaterEqual(len(suites), 8)
        parts = re.split(r"^#### `(\w+)`\n", (ROOT / "docs" / "config.md").read_text(),
                         flags=re.M)
        sections = dict(zip(parts[1::2], parts[2::2]))

        def value(text):
            text = text.strip().strip("`")
            try:
                v = json.loads(text)
            except ValueError:
                return text
            as_number = lambda x: float(x) if isinstance(x, (int, float)) and \
                not isinstance(x, bool) else x
            return [as_number(x) for x in v] if isinstance(v, list) else as_number(v)

        for suite, params in suites.items():
            self.assertIn(suite, sections, f"docs/config.md has no #### `{suite}` section")
            documented = {}
            for line in sections[suite].split("\n#")[0].splitlines():
                if not line.startswith("| `"):
                    continue
                cells = [c.strip() for c in line.split(" | ")]
                keys = re.findall(r"`(\w+)`", cells[0])
                defaults = re.findall(r"`([^`]*)`", cells[2])
                for i, key in enumerate(keys):
                    documented[key] = defaults[i] if len(defaults) == len(keys) else cells[2]
            self.assertEqual(sorted(documented), sorted(params), suite)
            for key, default in params.items():
                self.assertEqual(value(documented[key]), value(default), f"{suite}.{key}")

    def test_documented_cell_ids_are_real(self):
        """The ids config.md, report-schema.md and the README give for the default kernels cell are
        the ones kvbench computes, and report-schema.md's canonical JSON hashes to the first."""
        ids = {}
        for attention in ("cpu", "reference"):
            path = self.write_config({"suites": [{"name": "kernels"}], "threads": 2,
                                      "attention": attention})
            res = kvbench("validate", "--config", path)
            self.assertEqual(res.returncode, 0, res.stderr)
            ids[attention] = re.search(r"kernels\.full\.[0-9a-f]{16}", res.stdout).group(0)
        for doc in ("config.md", "report-schema.md"):
            text = (ROOT / "docs" / doc).read_text()
            for attention, cell_id in ids.items():
                self.assertTrue(f"`{cell_id}`" in text, f"{doc} should give {cell_id} ({attention})")
        readme = (ROOT / "README.md").read_text()
        self.assertIn(f"`{ids['cpu']}`", readme)
        schema = (ROOT / "docs" / "report-schema.md").read_text()
        canonical = re.search(r'\n(\{"attention":"cpu".*"suite":"kernels".*\})\n', schema).group(1)
        h = 0xCBF29CE484222325
        for byte in canonical.encode():
            h = ((h ^ byte) * 0x100000001B3) % (1 << 64)
        self.assertEqual(f"kernels.full.{h:016x}", ids["cpu"])

    def test_a_retention_method_that_evicted_nothing_is_warned_about(self):
        # SnapKV with a budget above the prompt keeps every token: its latency, throughput,
        # fidelity, output-length and accuracy cells measure its codec alone and say so; one
        # that evicts says nothing.
        cfg = {"model": {"preset": "tiny-llama", "random_init": True}, "threads": 1,
               "methods": [{"name": "snapkv", "budget": 4096},
                           {"name": "snapkv", "budget": 16, "window": 4}],
               "suites": [{"name": "latency", "prompt_tokens": 40, "new_tokens": 2,
                           "repeats": 1, "warmup": 0},
                          {"name": "throughput", "batch": [1], "prompt_tokens": [40],
                           "new_tokens": [2], "repeats": 1, "warmup": 0},
                          {"name": "fidelity", "windows": 1, "prefix_tokens": 40,
                           "eval_tokens": 4},
                          {"name": "output_length", "samples": 2, "prompt_tokens": 40,
                           "max_new_tokens": 3, "control_temperatures": [], "control_seeds": 0},
                          {"name": "accuracy", "task": "passkey", "samples": 1,
                           "target_tokens": 160, "max_new_tokens": 3}]}
        res = self.run_ok(cfg)
        self.assertEqual(res.returncode, 0, res.stderr)
        _, report = self.report_from(res)
        for cell in report["cells"]:
            warned = any("evicted nothing" in w for w in cell.get("warnings", []))
            self.assertEqual(warned, cell["method"]["budget"] == 4096, cell["id"])

    def test_validate_refuses_a_checkpoint_written_for_another_preset(self):
        # model.path holds make-model's tiny-qwen3; the config asks for tiny-llama there.
        out = self.dir / "m2"
        self.assertEqual(kvbench("make-model", "--preset", "tiny-qwen3", "--out",
                                 str(out)).returncode, 0)
        cfg = {"model": {"preset": "tiny-llama", "path": str(out)},
               "suites": [{"name": "latency", "prompt_tokens": 8, "new_tokens": 2}]}
        for command in (["validate"], ["run", "--dry-run"]):
            res = kvbench(*command, "--config", self.write_config(cfg))
            self.assert_one_line_error(res, 2, "config: model.path: " + str(out) +
                                       " holds preset tiny-qwen3 seed 0 but the config asks for "
                                       "tiny-llama seed 0")
        # A kernels-only run reads no model: the same model section is not its concern.
        kernels_only = dict(cfg, suites=[TINY_SUITE])
        self.assertEqual(kvbench("validate", "--config",
                                 self.write_config(kernels_only)).returncode, 0)

    def test_missing_config_and_bad_usage(self):
        self.assert_one_line_error(kvbench("run", "--config", str(self.dir / "none.json")), 2,
                                   "no such file")
        self.assert_one_line_error(kvbench("run", "--config", str(self.dir)), 2,
                                   "is a directory")
        res = kvbench("make-model", "--preset", "tiny-llama", "--out", str(self.dir / "m"),
                      "--seed", "-1")
        self.assertEqual(res.returncode, 2, res.stdout + res.stderr)
        self.assertIn("--seed", res.stderr)
        for seed in ("010", "0x10"):  # CLI11 would read them as 8 and 16
            res = kvbench("make-model", "--preset", "tiny-llama", "--out", str(self.dir / "m"),
                          "--seed", seed)
            self.assertEqual(res.returncode, 2, res.stdout + res.stderr)
            self.assertIn("decimal integer", res.stderr)
        self.assertFalse((self.dir / "m").exists())
        self.assert_one_line_error(kvbench("frobnicate"), 2, "unknown command 'frobnicate'; "
                                   "commands: run, validate, list")
        self.assert_one_line_error(kvbench("compair"), 2, "(did you mean 'compare'?)")
        self.assert_one_line_error(kvbench("figures", "r.json"), 2, "scripts/figures.py")
        self.assert_one_line_error(kvbench("--log-level", "debug", "figures"), 2,
                                   "unknown command 'figures'")
        self.assertEqual(kvbench("run").returncode, 2)  # --config is required
        # An empty --out (an unset shell variable) is an error, not the config's folder.
        res = kvbench("run", "--config", self.write_config({"suites": [TINY_SUITE]}), "--out", "")
        self.assertEqual(res.returncode, 2, res.stdout + res.stderr)
        self.assertIn("output.dir", res.stderr)
        res = kvbench("version", "--log-level", "loud")
        self.assertEqual(res.returncode, 2)
        self.assertIn("--log-level", res.stderr)

    def test_validate_lists_cells(self):
        res = kvbench("validate", "--config", self.write_config({"suites": [TINY_SUITE]}))
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("valid, 1 cell(s)", res.stdout)

    def test_validate_refuses_a_suite_that_runs_a_model_without_one(self):
        # kernels alone runs no model; latency does, so a config with none is an error at once.
        res = kvbench("validate", "--config", self.write_config(
            {"suites": [TINY_SUITE, {"name": "latency"}]}))
        self.assert_one_line_error(res, 2, "model: none configured, but suites[1] (latency)")
        res = kvbench("run", "--dry-run", "--config", self.write_config(
            {"suites": [{"name": "fidelity"}]}))
        self.assert_one_line_error(res, 2, "suites[0] (fidelity) runs one")
        # What only the model's shape tells is refused too when its config can be read.
        res = kvbench("validate", "--config", self.write_config(
            {"model": {"preset": "tiny-llama", "random_init": True},
             "methods": [{"name": "full"}, {"name": "palu", "group": 3}],
             "suites": [{"name": "latency"}]}))
        self.assert_one_line_error(
            res, 2, "methods[1]: palu: group 3 must divide the model's KV heads (2)")
        # kvproj's calibration prompts longer than the model's positions (tiny-llama: 4096).
        res = kvbench("validate", "--config", self.write_config(
            {"model": {"preset": "tiny-llama", "random_init": True},
             "methods": [{"name": "kvproj", "calib_prompts": 1, "calib_tokens": 5000}],
             "suites": [{"name": "latency"}]}))
        self.assert_one_line_error(
            res, 2, "methods[0]: calibration: calib_tokens 5000 is more than the model's "
            "max_position_embeddings")

    def test_validate_refuses_what_the_paged_path_cannot_run(self):
        # On attention "paged", what a paged cache would refuse when built is refused before any
        # model loads: a policy Palu's kernel cannot serve, an fp32 model's full-cache baseline
        # (fidelity), a head size the GPU kernels do not take on the GPU path. A plain run
        # still fails only those cells.
        base = {"model": {"preset": "tiny-qwen3", "random_init": True, "dtype": "float16"},
                "attention": "paged",
                "suites": [{"name": "latency", "prompt_tokens": 32, "new_tokens": 2}]}
        palu_quest = {"name": "quest", "codec": {"name": "palu", "rank": 32}}
        for command in (["validate"], ["run", "--dry-run"]):
            res = kvbench(*command, "--config", self.write_config(
                dict(base, methods=[{"name": "full"}, palu_quest])))
            self.assert_one_line_error(
                res, 2, "methods[1]: paged cache: palu under retention policy 'quest'")
        fp32 = dict(base, model=dict(base["model"], dtype="float32"), methods=[{"name": "int8"}],
                    suites=[{"name": "fidelity", "windows": 1, "prefix_tokens": 32,
                             "eval_tokens": 4}])
        res = kvbench("validate", "--config", self.write_config(fp32))
        self.assert_one_line_error(res, 2, "suites[0]: fidelity: its full-cache baseline: "
                                   "paged cache: method 'full' stores Float")
        # tiny-llama's head_dim 32: fine on the plain paged path, not on the kernels'.
        llama = dict(base, model={"preset": "tiny-llama", "random_init": True,
                                  "dtype": "float16"}, methods=[{"name": "int8"}])
        self.assertEqual(kvbench("validate", "--config", self.write_config(llama)).returncode, 0)
        res = kvbench("validate", "--config", self.write_config(llama),
                      env=dict(os.environ, KVBENCH_PAGED_PATH="kernels"))
        self.assert_one_line_error(res, 2, "unsupported head_dim: 32")
        # Palu's kernel holds a KV head's query heads in 8 rows: a checkpoint whose config says
        # 16 per KV head (validate reads only its config.json) is refused on the kernel path.
        wide = self.dir / "wide"
        self.assertEqual(kvbench("make-model", "--preset", "tiny-qwen3", "--out",
                                 str(wide)).returncode, 0)
        shape = json.loads((wide / "config.json").read_text())
        shape["num_attention_heads"] = 16 * shape["num_key_value_heads"]
        (wide / "config.json").write_text(json.dumps(shape))
        palu = dict(base, model={"path": str(wide), "dtype": "float16"},
                    methods=[{"name": "palu", "rank": 32}])
        self.assertEqual(kvbench("validate", "--config", self.write_config(palu)).returncode, 0)
        res = kvbench("validate", "--config", self.write_config(palu),
                      env=dict(os.environ, KVBENCH_PAGED_PATH="kernels"))
        self.assert_one_line_error(
            res, 2, "palu on the GPU path takes at most 8 query heads per KV head; the model has 16")
        # So does every other method's: the dense decode kernel has the same 8 rows.
        int8 = dict(palu, methods=[{"name": "int8"}])
        self.assertEqual(kvbench("validate", "--config", self.write_config(int8)).returncode, 0)
        res = kvbench("validate", "--config", self.write_config(int8),
                      env=dict(os.environ, KVBENCH_PAGED_PATH="kernels"))
        self.assert_one_line_error(
            res, 2, "on the GPU path takes at most 8 query heads per KV head; the model has 16")
        # The kernels suite on the CPU has no paged kernel to time.
        res = kvbench("validate", "--config", self.write_config(
            {"attention": "paged", "suites": [TINY_SUITE]}))
        self.assert_one_line_error(res, 2, "suites[0]: kernels: attention \"paged\" on the CPU")
        # H2O over Palu, evicting at every decode step, is valid (its kernel writes the scores).
        ok = dict(base, methods=[{"name": "h2o", "heavy": 16, "recent": 16,
                                  "codec": {"name": "palu", "rank": 32}}])
        self.assertEqual(kvbench("validate", "--config", self.write_config(ok)).returncode, 0)
        # A plain run fails the refused cell only.
        res = self.run_ok(dict(base, methods=[{"name": "full"}, palu_quest]))
        self.assertEqual(res.returncode, 1, res.stderr)
        _, report = self.report_from(res)
        self.assertEqual([c["status"] for c in report["cells"]], ["ok", "failed"])

    def test_every_shipped_run_config_validates(self):
        # The configs the README and docs tell users to run must not rot as keys change;
        # train-*.json are training recipes (ShippedModel.IsTheRecipesModelAndLoads reads one).
        configs = sorted(p for p in (ROOT / "configs").glob("*.json")
                         if not p.name.startswith("train-"))
        self.assertGreater(len(configs), 5)
        for path in configs:
            # From the repository root, as the README runs them: their data paths are relative.
            res = kvbench("validate", "--config", str(path), cwd=str(ROOT))
            if res.returncode == 2 and json.loads(path.read_text()).get("device") == "cuda":
                # GPU-only configs are refused without a GPU, with the reason; their methods
                # pass the GPU path's checks (the kernel path on the CPU).
                self.assertIn("no CUDA device is visible", res.stderr, path.name)
                res = kvbench("validate", "--config", str(path), "--set", "device=cpu",
                              cwd=str(ROOT), env=dict(os.environ, KVBENCH_PAGED_PATH="kernels"))
                self.assertEqual(res.returncode, 0, f"{path.name}: {res.stdout}{res.stderr}")
                continue
            self.assertEqual(res.returncode, 0, f"{path.name}: {res.stdout}{res.stderr}")
        # A training recipe given to validate is named as one, with the command that runs it.
        res = kvbench("validate", "--config", str(ROOT / "configs" / "train-retrieval-1m.json"))
        self.assert_one_line_error(res, 2, "this is a training recipe")
        self.assertIn("kvbench train --config", res.stderr)



class ReportCompareCliTest(CliCase):
    """kvbench report and kvbench compare on a real run's report (and edited copies of it)."""

    CONFIG = {"model": {"preset": "tiny-llama", "random_init": True}, "threads": 1,
              "methods": [{"name": "full"}, {"name": "int4"}],
              "suites": [{"name": "latency", "prompt_tokens": 16, "new_tokens": 4,
                          "warmup": 1, "repeats": 4},
                         TINY_SUITE]}

    def real_report(self):
        path, report = self.report_from(self.run_ok(self.CONFIG))
        return path, report

    def write_report(self, report, name):
        path = self.dir / name
        path.write_text(json.dumps(report))
        return str(path)

    def test_report_formats_on_a_real_run(self):
        path, report = self.real_report()
        res = kvbench("report", str(path))
        self.assertEqual(res.returncode, 0, res.stderr)
        md = res.stdout
        for fragment in ("## latency", "## kernels", "## pareto", "| method |", "| int4 |",
                         "tpot_median_s/full", "working_set_bytes/full", "Baseline: `full`"):
            self.assertIn(fragment, md)
        res = kvbench("report", str(path), "--format", "csv")
        self.assertEqual(res.returncode, 0, res.stderr)
        lines = res.stdout.splitlines()
        self.assertTrue(lines[0].startswith("table,method,"), lines[0])
        self.assertTrue(any(l.startswith("kernels,int4,") for l in lines))
        res = kvbench("report", str(path), "--format", "json", "--baseline", "int4")
        self.assertEqual(res.returncode, 0, res.stderr)
        out = json.loads(res.stdout)
        self.assertEqual(out["baseline"], "int4")
        names = [t["name"] for t in out["tables"]]
        self.assertEqual(names, ["latency", "kernels", "pareto"])
        lat = out["tables"][0]["rows"]
        self.assertEqual(lat[0]["method"], "int4")  # the baseline's row first
        self.assertEqual(lat[0]["kv_bytes/int4"], 1.0)
        self.assertAlmostEqual(lat[1]["kv_bytes/int4"], 3.2)  # 16 bits / 5 bits
        pareto = {r["method"]: r for r in out["tables"][2]["rows"]}
        self.assertTrue(pareto["int4"]["on_front"])

    def test_report_merges_later_file_wins_and_lists_failed_cells(self):
        path, report = self.real_report()
        later = copy.deepcopy(report)
        cell = later["cells"][1]  # latency int4
        cell.update(status="failed", error="out of memory", records=[], summary={})
        res = kvbench("report", str(path), self.write_report(later, "later.json"), "--format",
                      "json")
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("using the one from", res.stderr)
        self.assertIn("later.json", res.stderr)
        out = json.loads(res.stdout)
        failed = [t for t in out["tables"] if t["name"] == "failed"][0]["rows"]
        self.assertEqual([(r["cell"], r["error"]) for r in failed], [(cell["id"], "out of memory")])

    def test_report_rejects_other_schema_versions_and_bad_input(self):
        path, report = self.real_report()
        old = copy.deepcopy(report)
        old["schema_version"] = 1
        old_path = self.write_report(old, "old.json")
        self.assert_one_line_error(kvbench("report", str(path), old_path), 2, "old.json")
        self.assertIn("schema_version 1", kvbench("report", old_path).stderr)
        self.assert_one_line_error(kvbench("report", str(self.dir / "none.json")), 2,
                                   "none.json: cannot read")
        self.assertEqual(kvbench("report").returncode, 2)
        self.assertEqual(kvbench("report", str(path), "--format", "xml").returncode, 2)
        self.assert_one_line_error(kvbench("report", str(path), "--baseline", "kivi-2"), 2,
                                   "no ok cell has method or label 'kivi-2'")
        # A cell twice in one report (kvbench never writes that), and JSON that is not.
        twice = copy.deepcopy(report)
        twice["cells"].append(copy.deepcopy(twice["cells"][0]))
        twice_path = self.write_report(twice, "twice.json")
        cell_id = report["cells"][0]["id"]
        for cmd in (["report", twice_path], ["compare", twice_path, str(path)]):
            self.assert_one_line_error(kvbench(*cmd), 2,
                                       f"twice.json: cells[{len(report['cells'])}]: cell id "
                                       f"{cell_id} appears twice in one report")
        broken = self.dir / "broken.json"
        broken.write_text('{"schema": "kvbench.report",\n "cells": [}')
        self.assert_one_line_error(kvbench("report", str(broken)), 2,
                                   f"{broken}:2:12: invalid JSON")
        # A field of the wrong type: an input error naming the files and the validator.
        # Fields every reader iterates over are checked by type at load, naming the cell.
        wrong = copy.deepcopy(report)
        for cell in wrong["cells"]:
            cell["records"] = [5]
        wrong_path = self.write_report(wrong, "wrong.json")
        for cmd in (["report", wrong_path], ["compare", str(path), wrong_path]):
            self.assert_one_line_error(kvbench(*cmd), 2,
                                       "wrong.json: cells[0].records[0]: expected object, got number")
        # Deeper ones when they are read.
        for cell in wrong["cells"]:
            cell["records"] = [{"kind": 5}]
        wrong_path = self.write_report(wrong, "wrong.json")
        for cmd in (["report", wrong_path], ["compare", str(path), wrong_path]):
            self.assert_one_line_error(kvbench(*cmd), 2, "malformed report (type must be string")
            self.assertIn("validate_report.py", kvbench(*cmd).stderr)
        header = copy.deepcopy(report)  # read as the file is loaded, before any cell
        header["schema"] = 5
        header_path = self.write_report(header, "header.json")
        for cmd in (["report", header_path], ["compare", str(path), header_path]):
            self.assert_one_line_error(kvbench(*cmd), 2, "malformed report (type must be string")

    def test_compare_exit_codes(self):
        path, report = self.real_report()
        # The same report against itself: every difference is exactly zero.
        res = kvbench("compare", str(path), str(path))
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        self.assertIn("no regression beyond the thresholds", res.stdout)
        # TPOT 50% slower in every sample of the int4 latency cell, KV bytes 10% larger. The
        # baseline's TPOT samples are replaced by a narrow spread first: real ones on a loaded
        # machine can vary so much that a 50% shift is, rightly, not called with confidence.
        base = copy.deepcopy(report)
        for r in base["cells"][1]["records"]:
            if r["kind"] == "tpot":
                r["samples_s"] = [0.010 + 0.0001 * (i % 7) for i in range(len(r["samples_s"]))]
        path = pathlib.Path(self.write_report(base, "base.json"))
        slow = copy.deepcopy(base)
        lat = slow["cells"][1]
        self.assertEqual((lat["suite"], lat["method"]["name"]), ("latency", "int4"))
        for r in lat["records"]:
            if r["kind"] == "tpot":
                r["samples_s"] = [1.5 * s for s in r["samples_s"]]
        lat["summary"]["kv_bytes_peak"] = int(lat["summary"]["kv_bytes_peak"] * 1.1)
        slow_path = self.write_report(slow, "slow.json")
        res = kvbench("compare", str(path), slow_path)
        self.assertEqual(res.returncode, 1, res.stdout + res.stderr)
        self.assertIn("2 regression(s):", res.stdout)
        self.assertRegex(res.stdout, r"tpot latency\.int4\.\S+: .* \(\+50\.0%, 95% CI")
        self.assertRegex(res.stdout, r"kv_bytes latency\.int4\.\S+: .*\(\+10\.0%\)")
        # Raised thresholds let both through.
        res = kvbench("compare", str(path), slow_path, "--threshold", "tpot=60",
                      "--threshold", "kv_bytes=20")
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        # Usage and input errors: exit 2.
        self.assert_one_line_error(
            kvbench("compare", str(path), slow_path, "--threshold", "latency=5"), 2,
            "unknown metric 'latency'")
        self.assertEqual(kvbench("compare", str(path), slow_path, "--threshold", "tpot").returncode, 2)
        self.assertEqual(kvbench("compare", str(path)).returncode, 2)
        res = kvbench("compare", str(path), slow_path, "--seed", "-1")
        self.assertEqual(res.returncode, 2, res.stdout + res.stderr)
        self.assertIn("expected a number >= 0, got -1", res.stderr)
        res = kvbench("compare", str(path), slow_path, "--seed", "010")  # CLI11: octal 8
        self.assertEqual(res.returncode, 2, res.stdout + res.stderr)
        self.assertIn("expected a decimal integer without leading zeros, got 010", res.stderr)
        self.assert_one_line_error(kvbench("compare", str(path), str(self.dir / "none.json")), 2,
                                   "none.json")
        old = copy.deepcopy(report)
        old["schema_version"] = 3
        self.assert_one_line_error(
            kvbench("compare", self.write_report(old, "v3.json"), str(path)), 2, "v3.json")
        # A baseline whose cells all failed judges nothing, and says why.
        failed = copy.deepcopy(report)
        for c in failed["cells"]:
            c.update(status="failed", error="out of memory")
        failed_path = self.write_report(failed, "failed.json")
        res = kvbench("compare", failed_path, failed_path)
        self.assertEqual(res.returncode, 1, res.stdout + res.stderr)
        self.assertIn("no cell of the baseline is ok", res.stdout)
        # Every metric off judges nothing either, and says so.
        metrics = ("ttft", "tpot", "itl", "e2e", "kv_bytes", "decode_tok_s", "prefill_tok_s",
                   "attention_step", "serving_ttft", "serving_client_ttft", "serving_e2e",
                   "goodput", "predictor_step",
                   "predictor_accuracy", "kl_mean", "top1_agreement", "ppl_ratio",
                   "length_ratio", "mean_score", "runaway_rate")
        offs = [a for m in metrics for a in ("--threshold", m + "=off")]
        res = kvbench("compare", str(path), str(path), *offs)
        self.assertEqual(res.returncode, 1, res.stdout + res.stderr)
        self.assertIn("nothing compared: every metric is off", res.stdout)
        # Only the latency metrics and kv_bytes off: the kernels cell's steps are compared.
        res = kvbench("compare", str(path), str(path), *offs[:10])
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        self.assertIn("attention_step", res.stdout)
        self.assertNotIn("tpot", res.stdout)
        # A side may be a directory of repeated runs (every *.json under it): two copies of
        # the report a side compare as runs, with no one-run note; a directory with no report,
        # or with runs of different cells, is an input error.
        for side in ("base-runs", "new-runs"):
            for run in ("1", "2"):
                (self.dir / side / run).mkdir(parents=True)
                shutil.copy(path, self.dir / side / run / "r.json")
        # (a second link to one run's file is that run, not another)
        os.symlink(self.dir / "base-runs" / "1" / "r.json", self.dir / "base-runs" / "link.json")
        res = kvbench("compare", str(self.dir / "base-runs"), str(self.dir / "new-runs"))
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        self.assertIn("base-runs (2 runs) -> ", res.stdout)
        self.assertIn("new-runs (2 runs): ", res.stdout)
        self.assertNotIn("one run on a side", res.stderr)
        res = kvbench("compare", str(path), str(path))
        self.assertIn("one run on a side: timing intervals hold the noise within a run", res.stderr)
        (self.dir / "empty").mkdir()
        self.assert_one_line_error(kvbench("compare", str(path), str(self.dir / "empty")), 2,
                                   "is a directory with no report (*.json) in it")
        fewer = copy.deepcopy(base)
        fewer["cells"] = fewer["cells"][:1]
        self.write_report(fewer, "new-runs/2/r.json")
        self.assert_one_line_error(
            kvbench("compare", str(path), str(self.dir / "new-runs")), 2,
            "are not runs of one config: report 2 of 2 has 1 cell(s)")


def read_safetensors(path):
    raw = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_safetensors(path, header, data):
    text = json.dumps(header).encode()
    pathlib.Path(path).write_bytes(struct.pack("<Q", len(text)) + text + data)


def python_with_matplotlib():
    """An interpreter that can import matplotlib (Debian's serves /usr/bin/python3), or None."""
    for exe in (sys.executable, "/usr/bin/python3"):
        if exe and os.path.exists(exe) and subprocess.run(
                [exe, "-c", "import matplotlib"], capture_output=True).returncode == 0:
            return exe
    return None


class FiguresCliTest(CliCase):
    """scripts/figures.py on a real run of every suite with a figure."""

    FIGURES = ["throughput_vs_batch", "throughput_vs_length", "decode_speedup", "length_shift",
               "accuracy_scatter", "negative_samples", "latency_cdf", "serving_cdf", "fidelity_kl"]

    def figures(self, py, *args):
        return subprocess.run([py, str(ROOT / "scripts" / "figures.py"), *map(str, args)],
                              capture_output=True, text=True, timeout=300)

    def test_every_figure_type_is_a_valid_non_blank_image(self):
        py = python_with_matplotlib()
        if py is None:
            self.skipTest("matplotlib not installed (python3-matplotlib, installed by scripts/setup.sh)")
        cfg = {"model": {"preset": "tiny-llama", "random_init": True}, "threads": 1,
               "methods": [{"name": "full"}, {"name": "int4"}],
               "suites": [{"name": "latency", "prompt_tokens": 16, "new_tokens": 4, "repeats": 3},
                          {"name": "throughput", "batch": [1, 2], "prompt_tokens": [16, 32],
                           "new_tokens": [4], "repeats": 1},
                          {"name": "output_length", "samples": 4, "prompt_tokens": 16,
                           "max_new_tokens": 12, "control_temperatures": [], "control_seeds": 0},
                          {"name": "accuracy", "task": "passkey", "samples": 2,
                           "target_tokens": 300, "max_new_tokens": 6},
                          {"name": "serving", "rates": [2, 8], "requests": 3,
                           "prompt_tokens_min": 16, "prompt_tokens_max": 32,
                           "output_tokens_min": 2, "output_tokens_max": 4, "block_size": 16},
                          # Two configurations of one suite: each its own series.
                          {"name": "fidelity", "windows": 1, "prefix_tokens": 32, "eval_tokens": 4},
                          {"name": "fidelity", "windows": 1, "prefix_tokens": 16, "eval_tokens": 4}]}
        res = self.run_ok(cfg)
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        path, report = self.report_from(res)
        out = self.dir / "figs"
        fig = self.figures(py, path, "--out", out)
        self.assertEqual(fig.returncode, 0, fig.stdout + fig.stderr)
        self.assertNotIn("skipped", fig.stderr)
        check = ("import sys, matplotlib.image as m\n"
                 "for p in sys.argv[1:]:\n"
                 "    a = m.imread(p)\n"
                 "    print(p, a.shape[0], a.shape[1], float(a.std()))\n")
        pngs = [str(out / f"{name}.png") for name in self.FIGURES]
        stats = subprocess.run([py, "-c", check, *pngs], capture_output=True, text=True, timeout=120)
        self.assertEqual(stats.returncode, 0, stats.stderr)
        for line in stats.stdout.splitlines():
            name, height, width, spread = line.rsplit(" ", 3)
            self.assertGreater(int(height), 100, name)
            self.assertGreater(int(width), 100, name)
            self.assertGreater(float(spread), 0.01, name + ": blank image")
        for name in self.FIGURES:
            self.assertTrue((out / f"{name}.pdf").read_bytes().startswith(b"%PDF"), name)

        # The two fidelity configurations get distinct series labels, named by what differs.
        labels = ("import importlib.util, sys\n"
                  "spec = importlib.util.spec_from_file_location('figures', sys.argv[1])\n"
                  "f = importlib.util.module_from_spec(spec); spec.loader.exec_module(f)\n"
                  "cells = f.load_cells([sys.argv[2]]); lab = f.Labels(cells)\n"
                  "for c in cells:\n"
                  "    if c['suite'] == 'fidelity': print(lab.series(c))\n")
        got = subprocess.run([py, "-c", labels, str(ROOT / "scripts" / "figures.py"), str(path)],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(got.returncode, 0, got.stderr)
        self.assertEqual(sorted(got.stdout.split("\n")[:-1]),
                         ["full [prefix_tokens=16]", "full [prefix_tokens=32]",
                          "int4 [prefix_tokens=16]", "int4 [prefix_tokens=32]"])

        # A malformed cell fails its own figure only: the others are still drawn.
        broken = json.loads(json.dumps(report))
        for c in broken["cells"]:
            if c["suite"] == "throughput":
                c["records"] = [{"kind": "throughput"}]
        broken_path = self.dir / "broken.json"
        broken_path.write_text(json.dumps(broken))
        fig = self.figures(py, broken_path, "--out", self.dir / "figs3")
        self.assertEqual(fig.returncode, 1, fig.stdout + fig.stderr)
        self.assertIn("figures: throughput_figures: a report field is missing", fig.stderr)
        self.assertNotIn("Traceback", fig.stderr)
        for name in ("latency_cdf", "serving_cdf", "fidelity_kl", "length_shift"):
            self.assertTrue((self.dir / "figs3" / f"{name}.png").is_file(), name)
            self.assertIn(f"{name}.png", fig.stdout)

        # Figures whose suite the report lacks are listed on stderr.
        only = dict(report, cells=[c for c in report["cells"] if c["suite"] == "fidelity"])
        part = self.dir / "fidelity_only.json"
        part.write_text(json.dumps(only))
        fig = self.figures(py, part, "--out", self.dir / "figs2")
        self.assertEqual(fig.returncode, 0, fig.stdout + fig.stderr)
        self.assertIn("figures: skipped serving_cdf: no serving cells", fig.stderr)
        self.assertIn("figures: skipped accuracy_scatter, negative_samples: no accuracy cells", fig.stderr)
        self.assertTrue((self.dir / "figs2" / "fidelity_kl.png").is_file())

        # Cells of another model or code path are other series, never merged into these (the
        # same report as if run on tiny-qwen3, or with a KVBENCH_SIMD override on the cpu:
        # other ids, the setup names the difference, as `kvbench report` does).
        def labels_beside(edit, name):
            twin_report = json.loads(json.dumps(only))
            edit(twin_report)
            for c in twin_report["cells"]:
                c["id"] += "." + name
            twin = self.dir / f"fidelity_{name}.json"
            twin.write_text(json.dumps(twin_report))
            got = subprocess.run([py, "-c", labels.replace("[sys.argv[2]]", "sys.argv[2:]"),
                                  str(ROOT / "scripts" / "figures.py"), str(part), str(twin)],
                                 capture_output=True, text=True, timeout=120)
            self.assertEqual(got.returncode, 0, got.stderr)
            return sorted(got.stdout.split("\n")[:-1])

        def on_qwen(r):
            r["config"]["model"]["preset"] = "tiny-qwen3"

        def scalar_simd(r):
            r.setdefault("environment", {})["overrides"] = {"KVBENCH_SIMD": "scalar"}

        self.assertEqual(labels_beside(on_qwen, "qwen"),
                         sorted(f"{m} [model.preset={p},prefix_tokens={n}]"
                                for m in ("full", "int4") for p in ("tiny-llama", "tiny-qwen3")
                                for n in (16, 32)))
        self.assertEqual(labels_beside(scalar_simd, "simd"),
                         sorted(f"{m} [code_path.KVBENCH_SIMD={p},prefix_tokens={n}]"
                                for m in ("full", "int4") for p in ("None", "scalar")
                                for n in (16, 32)))

    def test_a_missing_report_is_a_one_line_error(self):
        py = python_with_matplotlib()
        if py is None:
            self.skipTest("matplotlib not installed (python3-matplotlib, installed by scripts/setup.sh)")
        res = self.figures(py, self.dir / "missing.json", "--out", self.dir / "figs")
        self.assert_one_line_error(res, 1, "missing.json: cannot read: No such file or directory")
        self.assertFalse((self.dir / "figs").exists())
        # Wrong shapes are one line too, not a traceback.
        bad = self.dir / "bad.json"
        for doc, fragment in (
                ({"schema_version": 2, "cells": []}, "not a kvbench report"),
                ({"schema": "kvbench.report", "schema_version": 2, "cells": {"a": 1}},
                 "cells must be a list of objects, each with a string id"),
                ({"schema": "kvbench.report", "schema_version": 2,
                  "cells": [{"id": "t", "suite": "throughput", "status": "ok",
                             "method": {"name": "full"}, "records": [{"kind": "throughput"}]}]},
                 "a report field is missing or of the wrong type")):
            with self.subTest(fragment):
                bad.write_text(json.dumps(doc))
                res = self.figures(py, bad, "--out", self.dir / "figs")
                if "missing or of the wrong type" not in fragment:
                    self.assert_one_line_error(res, 1, fragment)
                    continue
                # A malformed figure fails on its own line after the others' skips.
                self.assertEqual(res.returncode, 1, res.stdout + res.stderr)
                self.assertNotIn("Traceback", res.stderr)
                self.assertIn("figures: throughput_figures: " + fragment,
                              res.stderr.strip().splitlines()[-1])


class WorkloadsAcceptanceCliTest(CliCase):
    """configs/workloads-acceptance.json (issue 7's acceptance run) end to end."""

    def test_tasks_longbench_lengths_and_fidelity_in_one_report(self):
        res = kvbench("run", "--config", str(ROOT / "configs" / "workloads-acceptance.json"),
                      "--out", str(self.dir / "out"), "--log-level", "warn", cwd=str(ROOT))
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        path, report = self.report_from(res)
        self.assertEqual(subprocess.run([*VALIDATE, str(path)]).returncode, 0)
        cells = report["cells"]
        self.assertEqual(len(cells), 18)
        self.assertTrue(all(c["status"] == "ok" for c in cells))
        budget = 512  # stream-512 keeps 512 tokens
        for c in cells:
            self.assertIn(c["method"]["name"], ("full", "kivi-4", "stream-512"))
            if c["suite"] in ("accuracy", "output_length"):
                for r in c["records"]:
                    self.assertGreaterEqual(r["prompt_tokens"], 2 * budget, c["id"])
                    self.assertIn("kv_bytes", r)
                    self.assertIn("e2e_s", r)
            if c["suite"] == "accuracy":
                self.assertIn("negative_samples", c["summary"])
                self.assertEqual(len(c["summary"]["theta_sweep"]), 6)
                self.assertTrue(all("negative" in r and "output" in r for r in c["records"]))
            if c["suite"] == "output_length":
                self.assertIn("d_mean", c["summary"])
            if c["suite"] == "fidelity":
                self.assertGreaterEqual(c["summary"]["kl_mean"], 0)
        tasks = {c["params"]["task"] or c["params"]["data_file"] for c in cells if c["suite"] == "accuracy"}
        self.assertEqual(len(tasks), 4)
        # stream-512 holds at most its budget per layer; the full cache holds the whole prompt.
        lengths = [c for c in cells if c["suite"] == "output_length"]
        kv = {c["method"]["name"]: max(r["kv_bytes"] for r in c["records"]) for c in lengths}
        self.assertLess(kv["stream-512"], kv["full"])


class ServingCliTest(CliCase):
    """The serving suite end to end: a tiny version of configs/serving.json."""

    def test_rates_percentiles_goodput_and_preemption_in_one_report(self):
        cfg = json.loads((ROOT / "configs" / "serving.json").read_text())
        cfg.pop("output")
        cfg["suites"] = [{"name": "serving", "rates": [0, 200], "requests": 6,
                          "prompt_tokens_min": 8, "prompt_tokens_max": 16,
                          "output_tokens_min": 16, "output_tokens_max": 24, "block_size": 8,
                          # 8 full-cache blocks of 8 tokens (1 KiB per token): the largest
                          # request (39 tokens, 5 blocks) fits alone; three are admitted at
                          # rate 0 with 2 blocks each and outgrow the pool while decoding.
                          "kv_budget_bytes": 65536, "max_batch_tokens": 256,
                          # SLOs no run can miss, even on a loaded machine.
                          "slo_ttft_s": 1000.0, "slo_tpot_s": 1000.0}]
        res = self.run_ok(cfg)
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        self.assertIn("goodput/s", res.stdout)
        path, report = self.report_from(res)
        check = subprocess.run(VALIDATE + [str(path)], capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout)
        cells = {c["method"]["name"]: c for c in report["cells"]}
        self.assertEqual(set(cells), {"full", "kivi-4", "stream-512"})
        for name, c in cells.items():
            self.assertEqual(c["status"], "ok", c.get("error"))
            self.assertEqual([r["rate"] for r in c["records"]], [0, 200])
            for r in c["records"]:
                self.assertEqual(r["requests"], 6)
                self.assertEqual(len(r["samples_s"]), 6)
                for m in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
                    self.assertLessEqual(r[m]["p50"], r[m]["p90"])
                    self.assertLessEqual(r[m]["p90"], r[m]["p99"])
                # SLOs no run can miss (no timing assertion): every request meets them.
                self.assertEqual(r["goodput"]["requests_meeting_slo"], 6)
                self.assertEqual(r["goodput"]["fraction"], 1.0)
                self.assertLessEqual(r["kv"]["blocks_peak"], c["summary"]["num_blocks"])
                # The budget's per-block charge for the retention bookkeeping bounds what the
                # cache kept (stream-512: its positions; nothing for the others).
                self.assertLessEqual(r["kv"]["retention_bytes_peak"],
                                     r["kv"]["blocks_peak"]
                                     * c["summary"]["retention_bytes_per_block"])
                # The pool charges at least what the cache holds (kivi-4: its fp16 window).
                self.assertGreaterEqual(r["kv"]["pool_bytes_peak"], r["kv"]["measured_bytes_peak"])
                # What the storage occupied includes what it held.
                self.assertGreaterEqual(r["kv"]["allocated_bytes_peak"],
                                        r["kv"]["measured_bytes_peak"])
        # The same budget holds more kivi-4 blocks; full runs out and preempts at rate 0.
        self.assertEqual(cells["full"]["summary"]["num_blocks"], 8)
        self.assertGreater(cells["kivi-4"]["summary"]["num_blocks"], 8)
        self.assertGreater(cells["full"]["records"][0]["preemptions"], 0)
        self.assertEqual(cells["stream-512"]["summary"]["retention_budget"], 512)
        # Same requests for every method.
        lengths = {n: [(d["prompt_tokens"], d["output_tokens"])
                       for d in c["records"][0]["requests_detail"]] for n, c in cells.items()}
        self.assertEqual(lengths["full"], lengths["kivi-4"])
        self.assertEqual(lengths["full"], lengths["stream-512"])
        # kvbench report has a serving table with one row per method and rate.
        rep = kvbench("report", str(path), "--format", "csv")
        self.assertEqual(rep.returncode, 0, rep.stderr)
        self.assertIn("goodput_per_s", rep.stdout)

    def test_impossible_budget_fails_the_cell_with_the_key(self):
        cfg = {"model": {"preset": "tiny-llama", "random_init": True},
               "suites": [{"name": "serving", "rates": [0], "requests": 2,
                           "kv_budget_bytes": 1000}]}
        res = self.run_ok(cfg)
        _, report = self.report_from(res)
        cell = report["cells"][0]
        self.assertEqual(cell["status"], "failed")
        self.assertIn("kv_budget_bytes", cell["error"])

    def test_trace_sharegpt_duration_lognormal_and_chunked_prefill(self):
        """The other request sources and chunked prefill, end to end in one short run."""
        fixtures = ROOT / "tests" / "fixtures" / "serving"
        trace = [json.loads(l) for l in (fixtures / "trace.jsonl").read_text().splitlines()]
        common = {"name": "serving", "block_size": 16, "kv_budget_bytes": 2097152,
                  "slo_ttft_s": 100.0, "slo_tpot_s": 100.0}
        cfg = {"model": {"preset": "tiny-llama", "random_init": True},
               "methods": [{"name": "full"}, {"name": "kivi-4"}],
               "suites": [
                   # Prompts up to 160 tokens through a 64-token step budget: only chunks fit.
                   dict(common, trace_file=str(fixtures / "trace.jsonl"), chunked_prefill=True,
                        prefill_chunk_tokens=32, max_batch_tokens=64),
                   # Bursty arrivals: the report says "gamma" and validates.
                   dict(common, sharegpt_file=str(fixtures / "sharegpt.json"), rates=[50],
                        burstiness=0.5, requests=9, prompt_tokens_min=1, prompt_tokens_max=512,
                        output_tokens_min=2, output_tokens_max=8),
                   # Two client slots: requests finding both busy wait at the client.
                   dict(common, rates=[100], duration_s=0.1, length_distribution="lognormal",
                        max_concurrency=2,
                        prompt_tokens_min=8, prompt_tokens_max=64, prompt_tokens_mean=24,
                        prompt_tokens_sigma=0.7, output_tokens_min=2, output_tokens_max=6),
               ]}
        res = self.run_ok(cfg)
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        path, report = self.report_from(res)
        check = subprocess.run(VALIDATE + [str(path)], capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout)
        cells = {(c["params"]["trace_file"] and "trace" or c["params"]["sharegpt_file"] and
                  "sharegpt" or "synthetic", c["method"]["name"]): c for c in report["cells"]}
        self.assertEqual(len(cells), 6)
        for key, c in cells.items():
            self.assertEqual(c["status"], "ok", (key, c.get("error")))
            self.assertEqual(c["summary"]["source"], key[0])
            for r in c["records"]:
                self.assertEqual(r["arrivals"], {"trace": "trace", "sharegpt": "gamma"}.get(
                    key[0], "poisson"))
                self.assertEqual(r["goodput"]["requests_meeting_slo"], r["requests"])
                # The window blocks keep the pool's charge above what the cache holds.
                self.assertGreaterEqual(r["kv"]["pool_bytes_peak"], r["kv"]["measured_bytes_peak"],
                                        key)
            self.assertEqual(c["summary"]["window_blocks"] > 0, key[1] == "kivi-4")
        # The trace: every line a request, at its own time and lengths; one record, whose rate
        # is the trace's mean arrival rate.
        for name in ("full", "kivi-4"):
            c = cells[("trace", name)]
            self.assertTrue(c["summary"]["chunked_prefill"])
            self.assertEqual(len(c["records"]), 1)
            r = c["records"][0]
            detail = r["requests_detail"]
            self.assertEqual(len(detail), len(trace))
            self.assertAlmostEqual(r["rate"], (len(trace) - 1) / trace[-1]["arrival_s"])
            for d, t in zip(detail, trace):  # replayed from the first arrival
                self.assertEqual(d["arrival_s"], t["arrival_s"] - trace[0]["arrival_s"])
                self.assertEqual(d["output_tokens"], t["output_tokens"])
                if "prompt_tokens" in t:
                    self.assertEqual(d["prompt_tokens"], t["prompt_tokens"])
            self.assertGreater(max(d["prompt_tokens"] for d in detail), 64)
        # ShareGPT: 7 usable conversations of 8 (one has no question), cycled over 9 requests;
        # outputs clamped to [2, 8]; the same requests for both methods.
        shares = [cells[("sharegpt", n)] for n in ("full", "kivi-4")]
        self.assertEqual(shares[0]["summary"]["sharegpt_conversations"], 7)
        self.assertEqual(shares[0]["summary"]["sharegpt_skipped"], 1)
        lengths = [[(d["prompt_tokens"], d["output_tokens"])
                    for d in c["records"][0]["requests_detail"]] for c in shares]
        self.assertEqual(lengths[0], lengths[1])
        self.assertEqual(len(lengths[0]), 9)
        self.assertEqual(lengths[0][7:], lengths[0][:2])  # the 8th request starts the cycle again
        self.assertTrue(all(2 <= o <= 8 for _, o in lengths[0]))
        # Duration: arrivals stop before 0.1 s; lognormal lengths stay in their ranges.
        for name in ("full", "kivi-4"):
            r = cells[("synthetic", name)]["records"][0]
            self.assertEqual(cells[("synthetic", name)]["summary"]["duration_s"], 0.1)
            self.assertTrue(all(d["arrival_s"] < 0.1 for d in r["requests_detail"]))
            self.assertTrue(all(8 <= d["prompt_tokens"] <= 64 for d in r["requests_detail"]))
            self.assertTrue(all(2 <= d["output_tokens"] <= 6 for d in r["requests_detail"]))
            # At most 2 in flight: at each send (arrival + client wait), fewer than 2 earlier
            # requests are sent and unfinished (their last token at send + e2e).
            self.assertEqual(r["max_concurrency"], 2)
            self.assertEqual(r["client_wait_s"]["n"], len(r["requests_detail"]))
            sends = [(d["arrival_s"] + d["client_wait_s"], d["e2e_s"]) for d in r["requests_detail"]]
            for i, (sent, _) in enumerate(sends):
                busy = [j for j in range(i) if sends[j][0] <= sent + 1e-9
                        and sends[j][0] + sends[j][1] > sent + 1e-9]
                self.assertLess(len(busy), 2, (name, i, sends))
        for key, c in cells.items():
            self.assertEqual(c["summary"]["max_concurrency"], 2 if key[0] == "synthetic" else 0)
            if key[0] != "synthetic":
                self.assertNotIn("client_wait_s", c["records"][0])
                self.assertTrue(all(d["client_wait_s"] == 0
                                    for d in c["records"][0]["requests_detail"]))

    def test_request_source_errors_name_the_key(self):
        bad_trace = self.dir / "bad.jsonl"
        bad_trace.write_text('{"arrival_s": 0, "prompt_tokens": 4, "output_tokens": 2}\n'
                             '{"arrival_s": 1, "prompt_tokens": 4}\n')
        good_trace = str(ROOT / "tests" / "fixtures" / "serving" / "trace.jsonl")
        # Rules across the suite's keys: config errors at validate and run, before any model.
        config_cases = [
            ({"trace_file": good_trace, "rates": [2]}, "rates and trace_file exclude each other"),
            ({"trace_file": good_trace, "requests": 3}, "requests and trace_file exclude"),
            # A key set to its default value is set all the same.
            ({"trace_file": good_trace, "requests": 32}, "requests and trace_file exclude"),
            ({"trace_file": good_trace, "rates": [1, 4, 16]}, "rates and trace_file exclude"),
            ({"trace_file": good_trace, "burstiness": 0.5}, "burstiness and trace_file exclude"),
            ({"rates": [2], "duration_s": 1, "requests": 32}, "give requests or duration_s"),
            ({"trace_file": good_trace, "sharegpt_file": good_trace},
             "give at most one of trace_file"),
            ({"rates": [0, 2], "duration_s": 1}, "duration_s needs every rate > 0"),
            ({"rates": [2], "duration_s": 1, "requests": 4}, "give requests or duration_s"),
            ({"length_distribution": "lognormal", "prompt_tokens_mean": 1000},
             "prompt_tokens_mean (1000) must be 0 (the midpoint) or within"),
            ({"prompt_tokens_max": 1000, "output_tokens_max": 64, "max_batch_tokens": 512},
             "prompt_tokens_max + output_tokens_max - 1 = 1063 tokens can be one request's "
             "prefill"),
        ]
        for params, fragment in config_cases:
            with self.subTest(fragment):
                suite = dict({"name": "serving", "kv_budget_bytes": 2097152}, **params)
                path = self.write_config({"model": {"preset": "tiny-llama", "random_init": True},
                                          "suites": [suite]})
                self.assert_one_line_error(kvbench("validate", "--config", path), 2,
                                           "config: suites[0]: serving: " + fragment)
        # snapkv selects once from the whole prefill: chunked prefill is refused at validate.
        path = self.write_config({"model": {"preset": "tiny-llama", "random_init": True},
                                  "methods": [{"name": "full"}, {"name": "snapkv"}],
                                  "suites": [{"name": "serving", "chunked_prefill": True}]})
        self.assert_one_line_error(kvbench("validate", "--config", path), 2,
                                   "config: suites[0] x methods[1]: serving: chunked_prefill: "
                                   "method 'snapkv'")
        # ... and so are budgets sized from the whole prompt (plain h2o: 10% of it each).
        path = self.write_config({"model": {"preset": "tiny-llama", "random_init": True},
                                  "methods": [{"name": "h2o"}],
                                  "suites": [{"name": "serving", "chunked_prefill": True}]})
        self.assert_one_line_error(kvbench("validate", "--config", path), 2,
                                   "config: suites[0] x methods[0]: serving: chunked_prefill: "
                                   "method 'h2o' (retention policy 'h2o') sizes its budget as a "
                                   "fraction of the whole prompt")
        # What needs the trace's contents: the cell fails with the reason.
        huge_trace = self.dir / "huge.jsonl"  # a prompt of 10^9 ids would be made before use
        huge_trace.write_text('{"arrival_s": 0, "prompt_tokens": 1000000000, "output_tokens": 2}\n')
        cases = [
            ({"trace_file": str(bad_trace)}, f'{bad_trace}:2: "output_tokens": missing'),
            ({"trace_file": str(huge_trace)},
             f'{huge_trace}:1: "prompt_tokens": expected an integer in [1, 16777216]'),
        ]
        suites = []
        for params, _ in cases:
            suite = {"name": "serving", "kv_budget_bytes": 2097152}
            if "trace_file" not in params:
                suite["rates"] = [0]
            suites.append(dict(suite, **params))
        cfg = {"model": {"preset": "tiny-llama", "random_init": True},
               "methods": [{"name": "snapkv"}], "suites": suites}
        res = self.run_ok(cfg)
        _, report = self.report_from(res)
        self.assertEqual(len(report["cells"]), len(cases))
        for cell, (params, fragment) in zip(report["cells"], cases):
            with self.subTest(fragment):
                self.assertEqual(cell["status"], "failed")
                self.assertIn(fragment, cell["error"])
        # An unknown distribution is a config error naming the valid ones.
        res = self.run_ok({"suites": [{"name": "serving", "length_distribution": "zipf"}]})
        self.assert_one_line_error(res, 2, "suites[0].length_distribution")
        self.assertIn("lognormal", res.stderr)


class GpuScriptsTest(unittest.TestCase):
    """scripts/best_decode_loops.py: what scripts/gpu_session.sh gives the suites from the decode
    bench's JSON lines (each format's fastest loop; the retained-index kernel's tokens per step)."""

    def bench_lines(self, rows):
        return [json.dumps({"batch": 16, "context": 32768, **r}) for r in rows] + ["{cut"]

    def script(self, *args, rows):
        with tempfile.TemporaryDirectory() as d:
            path = pathlib.Path(d) / "bench.jsonl"
            path.write_text("\n".join(self.bench_lines(rows)) + "\n")
            res = subprocess.run([sys.executable, str(ROOT / "scripts" / "best_decode_loops.py"),
                                  *args, str(path)], capture_output=True, text=True)
        self.assertEqual(res.returncode, 0, res.stderr)
        return res.stdout.strip()

    def test_each_format_on_its_fastest_loop(self):
        rows = [{"format": "fp16", "loop": "v2", "us_per_step": 500},
                {"format": "fp16", "loop": "v2b", "us_per_step": 480},
                {"format": "kivi-2", "loop": "v2b", "us_per_step": 100},  # not built for KIVI
                {"format": "kivi-2", "loop": "v3h", "us_per_step": 400},
                {"format": "fp16", "loop": "v4", "us_per_step": 50},  # not built for fp16
                {"format": "kivi-4", "loop": "v3", "us_per_step": 500},
                {"format": "kivi-4", "loop": "v4", "us_per_step": 300},
                {"format": "int4", "loop": "v3", "us_per_step": 300, "batch": 1}]  # other shape
        self.assertEqual(self.script(rows=rows), "fp16=v2b,kivi-2=v3h,kivi-4=v4")

    def test_retained_tokens_four_only_where_both_kept_sizes_gain(self):
        def rows(t4_512, t4_2k):
            return [{"format": "kept-512", "loop": "-", "us_per_step": 100},
                    {"format": "kept-512-t4", "loop": "-", "us_per_step": t4_512},
                    {"format": "kept-2k", "loop": "-", "us_per_step": 300},
                    {"format": "kept-2k-t4", "loop": "-", "us_per_step": t4_2k}]
        self.assertEqual(self.script("--retained", rows=rows(60, 200)), "4")
        self.assertEqual(self.script("--retained", rows=rows(60, 310)), "1")
        self.assertEqual(self.script("--retained", rows=rows(100, 200)), "1")  # a tie: no gain
        self.assertEqual(self.script("--retained", rows=rows(60, 200)[:2]), "")  # no kept-2k rows


class BestModelGemmTest(unittest.TestCase):
    """scripts/best_model_gemm.py: the suites' weight multiplies from the small-GEMM bench's and
    the cuBLAS peer's step records (kvbench only when at least 2% faster at the asked batch)."""

    def pick(self, peer_rows, ours_rows, *args):
        with tempfile.TemporaryDirectory() as d:
            peer, ours = pathlib.Path(d) / "peer.jsonl", pathlib.Path(d) / "ours.jsonl"
            peer.write_text("".join(json.dumps(r) + "\n" for r in peer_rows) + "{cut\n")
            ours.write_text("".join(json.dumps(r) + "\n" for r in ours_rows))
            res = subprocess.run([sys.executable, str(ROOT / "scripts" / "best_model_gemm.py"),
                                  str(peer), str(ours), *args], capture_output=True, text=True)
        self.assertEqual(res.returncode, 0, res.stderr)
        return res.stdout.strip()

    def test_the_kernel_only_where_a_step_is_faster(self):
        def step(how, us, batch=16):
            return {"batch": batch, "matmul": "step", "how": how, "us": us}
        cublas = [step("mm_t", 7000), step("linear", 6000), step("mm_t", 100, batch=32)]
        self.assertEqual(self.pick(cublas, [step("small_gemm", 5000)]), "kvbench")
        self.assertEqual(self.pick(cublas, [step("small_gemm", 6900)]), "aten")  # within 2%
        # The fastest block width, named so that the suites run that one.
        widths = [step("small_gemm", 5000), step("small_gemm_c16", 4500), step("small_gemm_c32", 4800)]
        self.assertEqual(self.pick(cublas, widths), "kvbench:16")
        self.assertEqual(self.pick(cublas, [step("small_gemm_c32", 10)]), "kvbench:32")
        self.assertEqual(self.pick(cublas, [step("small_gemm", 5000)], "--batch", "32"), "aten")
        self.assertEqual(self.pick([], [step("small_gemm", 5000)]), "aten")
        # cuBLAS replayed from a graph, without Python's launch cost, is the one to beat.
        graphed = cublas + [step("mm_t_graph", 4000)]
        self.assertEqual(self.pick(graphed, [step("small_gemm", 5000)]), "aten")
        self.assertEqual(self.pick(graphed, [step("small_gemm", 3000)]), "kvbench")


class ServingToolsCliTest(CliCase):
    """Issue 9's tools end to end on the tiny preset: the capacity view of the throughput suite,
    the predictor suite (profile, held-out accuracy, routing) and the length-shift table."""

    MODEL = {"preset": "tiny-llama", "random_init": True}
    METHODS = [{"name": "full"}, {"name": "kivi-4"}, {"name": "stream-512"}]

    def validated(self, res):
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        path, report = self.report_from(res)
        check = subprocess.run(VALIDATE + [str(path)], capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout)
        for c in report["cells"]:
            self.assertEqual(c["status"], "ok", c.get("error"))
        return path, {c["method"]["name"]: c for c in report["cells"]}

    def report_tables(self, path):
        rep = kvbench("report", str(path), "--format", "json")
        self.assertEqual(rep.returncode, 0, rep.stderr)
        return {t["name"]: t for t in json.loads(rep.stdout)["tables"]}

    def test_capacity_view_largest_batch_within_the_budget(self):
        # 3 MiB for 600-token sequences: full (600 KiB each) fits 5, stream-512 (512 KiB held,
        # 533.5 KiB while a prompt enters: every layer but the last already cut) 5, kivi-4 more
        # than max_batch 8, so it is measured at 8 and both are recorded.
        cfg = {"model": self.MODEL, "threads": 1, "methods": self.METHODS,
               "suites": [{"name": "throughput", "batch": [1], "prompt_tokens": [16],
                           "new_tokens": [2], "warmup": 0, "repeats": 1,
                           "capacity_context": 600, "capacity_new_tokens": 3,
                           "kv_budget_bytes": 3145728, "max_batch": 8}]}
        path, cells = self.validated(self.run_ok(cfg))
        cap = {n: c["summary"]["capacity"] for n, c in cells.items()}
        self.assertEqual((cap["full"]["max_batch_fit"], cap["full"]["batch"]), (5, 5))
        self.assertEqual((cap["stream-512"]["max_batch_fit"], cap["stream-512"]["batch"]), (5, 5))
        self.assertGreater(cap["kivi-4"]["max_batch_fit"], 8)
        self.assertEqual(cap["kivi-4"]["batch"], 8)
        self.assertTrue(cap["kivi-4"]["capped"])
        for name, c in cells.items():
            rec = [r for r in c["records"] if r["kind"] == "capacity"]
            self.assertEqual(len(rec), 1, name)
            self.assertTrue(rec[0]["formula_matches_measured"], name)
            self.assertLessEqual(rec[0]["kv_bytes_at_fit"], 3145728)
        table = self.report_tables(path)["capacity"]
        self.assertEqual(len(table["rows"]), 3)
        self.assertIn("max_batch_fit/full", table["columns"])

    def test_predictor_profile_heldout_points_and_routing(self):
        cfg = {"model": self.MODEL, "threads": 1, "methods": self.METHODS,
               "suites": [{"name": "predictor", "batch": [1, 2, 4], "context": [16, 32, 64],
                           "steps": 2, "repeats": 2, "warmup": 0, "routing_requests": 60,
                           "routing_replicas": 3, "routing_prompt_tokens_min": 16,
                           "routing_prompt_tokens_max": 48, "routing_output_tokens_min": 2,
                           "routing_output_tokens_max": 16}]}
        path, cells = self.validated(self.run_ok(cfg))
        for name, c in cells.items():
            s = c["summary"]
            self.assertEqual(s["heldout_points"], [[3, 23], [3, 45]], name)
            roles = [r["role"] for r in c["records"] if r["kind"] == "step_profile"]
            self.assertEqual(roles.count("grid"), 9)
            self.assertEqual(roles.count("heldout"), 2)
            routing = {r["policy"]: r for r in c["records"] if r["kind"] == "routing"}
            self.assertEqual(set(routing), {"round_robin", "least_predicted",
                                            "least_predicted_mean_length"})
            self.assertEqual(routing["round_robin"]["requests_per_replica"], [20, 20, 20])
            # The same simulated requests (run seed) for every policy and method.
            self.assertEqual(sum(routing["least_predicted"]["requests_per_replica"]), 60)
        tables = self.report_tables(path)
        self.assertEqual(len(tables["predictor"]["rows"]), 3)
        self.assertEqual(len(tables["routing"]["rows"]), 9)

    def test_predictor_heldout_accuracy_at_least_85_percent(self):
        """The issue's test on measured times: held-out accuracy >= 85% on this machine.
        Medians of every timed step over 9 interleaved generations per point; held-out points
        inside the grid. Noise only lowers the accuracy (it moves the grid's times and the
        held-out truths apart), so up to three runs are made and the test passes on the first
        run at or above 85%. A run counts only when the machine repeated its own timings
        (`noise`, the median relative half-width of a point's 95% interval, at most 25%): when
        a counted run stays below 85% the test fails with every run's numbers; when no run
        counts (a loaded machine) it is skipped with them."""
        cfg = {"model": self.MODEL, "threads": 1, "methods": [{"name": "full"}],
               "suites": [{"name": "predictor", "batch": [1, 2, 4, 8],
                           "context": [32, 64, 128, 256], "steps": 2, "repeats": 9,
                           "warmup": 1, "routing_requests": 0}]}
        attempts = []
        for _ in range(3):
            _, cells = self.validated(self.run_ok(cfg))
            s = cells["full"]["summary"]
            attempts.append(s)
            if s["noise"] <= 0.25 and s["accuracy_mean"] >= 0.85:
                return
        detail = "; ".join(
            f"run {i}: accuracy mean {a['accuracy_mean']:.3f} min {a['accuracy_min']:.3f}, "
            f"least squares {a['models']['least_squares']['heldout_accuracy']['mean']:.3f}, "
            f"noise {a['noise']:.3f} (max {a['noise_max']:.3f})" for i, a in enumerate(attempts))
        counted = [a for a in attempts if a["noise"] <= 0.25]
        if not counted:
            self.skipTest("timings too noisy to judge a predictor (" + detail + ")")
        self.fail("held-out accuracy below 85% on runs with usable timings: " + detail)

    def test_length_shift_table_per_method_and_task(self):
        prompts = self.dir / "prompts.jsonl"
        rows = [{"prompt": "the cat sat on the mat", "task": "chat"},
                {"prompt": "one two three four", "task": "count"},
                {"prompt": "red green blue", "task": "chat"}]
        prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = {"model": self.MODEL, "threads": 1,
               "methods": [{"name": "full"}, {"name": "stream-512"}],
               "suites": [{"name": "output_length", "prompts_file": str(prompts),
                           "max_new_tokens": 8, "control_temperatures": [], "control_seeds": 0}]}
        path, cells = self.validated(self.run_ok(cfg))
        for c in cells.values():
            tasks = c["summary"]["tasks"]
            self.assertEqual([(t["task"], t["samples"]) for t in tasks], [("chat", 2), ("count", 1)])
        table = self.report_tables(path)["length_shift"]
        self.assertEqual(len(table["rows"]), 4)  # 2 methods x 2 tasks
        for col in ("task", "mean_length_full", "median_length", "length_ratio"):
            self.assertIn(col, table["columns"])


class ModelCliTest(CliCase):
    """make-model, model suites, and every corrupt-checkpoint case as a one-line error."""

    def make_model(self, preset="tiny-llama"):
        out = self.dir / preset
        res = kvbench("make-model", "--preset", preset, "--out", str(out), "--seed", "3")
        self.assertEqual(res.returncode, 0, res.stderr)
        for f in ("config.json", "generation_config.json", "model.safetensors"):
            self.assertTrue((out / f).is_file(), f)
        return out

    def run_model(self, model_dir, *extra):
        cfg = {"model": {"path": str(model_dir)},
               "suites": [{"name": "latency", "prompt_tokens": 8, "new_tokens": 3,
                           "warmup": 0, "repeats": 1}]}
        return kvbench("run", "--config", self.write_config(cfg), "--out",
                       str(self.dir / "out"), "--log-level", "error", *extra)

    def test_make_model_writes_a_loadable_hf_checkpoint(self):
        out = self.make_model("tiny-qwen3")
        config = json.loads((out / "config.json").read_text())
        self.assertEqual(config["architectures"], ["Qwen3ForCausalLM"])
        self.assertTrue(config["kvbench"]["random_weights"])
        header, _ = read_safetensors(out / "model.safetensors")
        self.assertEqual(header["model.layers.0.self_attn.q_norm.weight"]["dtype"], "BF16")
        self.assertEqual(header["model.layers.0.self_attn.q_proj.weight"]["shape"], [256, 128])
        res = self.run_model(out)
        self.assertEqual(res.returncode, 0, res.stderr)
        _, report = self.report_from(res)
        self.assertTrue(report["model"]["random_weights"])
        self.assertEqual(report["model"]["seed"], 3)  # the checkpoint's, not config.seed's
        self.assertEqual(report["model"]["config"]["architecture"], "Qwen3ForCausalLM")
        self.assertGreater(report["cells"][0]["peak_rss_bytes"], 0)
        self.assert_one_line_error(
            kvbench("make-model", "--preset", "tiny-gpt", "--out", str(self.dir / "x")), 2,
            "make-model: unknown model preset 'tiny-gpt'; presets: tiny-llama")
        self.assert_one_line_error(
            kvbench("make-model", "--preset", "llama-3-8b", "--out", str(self.dir / "x")), 2,
            "make-model: preset llama-3-8b has real-model shapes and is built in memory only")
        self.assertFalse((self.dir / "x").exists())
        # Its own preset checkpoint make-model writes again; anything else only with --force.
        again = kvbench("make-model", "--preset", "tiny-llama", "--out", str(out))
        self.assertEqual(again.returncode, 0, again.stderr)
        precious = self.dir / "precious"
        precious.mkdir()
        (precious / "config.json").write_text('{"note": "precious"}')
        res = kvbench("make-model", "--preset", "tiny-llama", "--out", str(precious))
        self.assert_one_line_error(res, 2, "not a kvbench preset checkpoint")
        self.assertIn("--force", res.stderr)
        self.assertEqual((precious / "config.json").read_text(), '{"note": "precious"}')
        res = kvbench("make-model", "--preset", "tiny-llama", "--out", str(precious), "--force")
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("kvbench", json.loads((precious / "config.json").read_text()))
        # Paths that cannot be a directory, and a seed past 64 bits (CLI11 would clamp it) or
        # in hex (CLI11 reads it).
        (self.dir / "afile").write_text("x")
        for out, why in (("", 'cannot write "": Invalid argument'),
                         (str(self.dir / "afile" / "x"), "Not a directory")):
            self.assert_one_line_error(
                kvbench("make-model", "--preset", "tiny-llama", "--out", out), 2, why)
        for seed, why in (("99999999999999999999999", "expected a number <= 9007199254740991 "
                           "(2^53 - 1, the largest model.seed)"),
                          ("0x1ffffffffffffffff", "expected a decimal integer")):
            res = kvbench("make-model", "--preset", "tiny-llama", "--out", str(self.dir / "s"),
                          "--seed", seed)
            self.assertEqual(res.returncode, 2, seed)
            self.assertIn(why, res.stderr)
            self.assertFalse((self.dir / "s").exists())

    def test_latency_and_throughput_report_validates(self):
        cfg = {"model": {"preset": "tiny-llama", "random_init": True},
               "suites": [{"name": "latency", "prompt_tokens": 16, "new_tokens": 4,
                           "repeats": 2},
                          {"name": "throughput", "batch": [1, 2], "prompt_tokens": [16],
                           "new_tokens": [4], "repeats": 1}]}
        res = self.run_ok(cfg)
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("decode tok/s", res.stdout)
        self.assertIn("ttft", res.stdout)
        path, report = self.report_from(res)
        lat, thr = report["cells"]
        self.assertIn("tpot_s", lat["summary"])
        self.assertEqual(len(thr["records"]), 2)
        check = subprocess.run(VALIDATE + [str(path)], capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout)

    def test_paged_attention_runs_the_gpu_formats_and_matches_reference(self):
        # attention "paged": the GPU path's paged formats and appender on the CPU. The paged
        # cache takes fp16 inputs (the kernels' dtype); with bf16 compute the model's keys and
        # values are fp16-exact, so KIVI, q4_1 and q2_1 code the same values on both paths
        # and fidelity is the reference backend's (with fp32 compute the q4_1 codes of the
        # fp16-rounded inputs differ at rounding boundaries: measured KL 2.3e-4 vs 2.0e-4).
        # Methods without a paged format fail their cell with the reason, the others still run.
        cfg = {"model": {"preset": "tiny-llama", "random_init": True, "dtype": "float16",
                         "compute_dtype": "bfloat16"},
               "methods": [{"name": "full"}, {"name": "kivi-2"},
                           {"name": "int4", "symmetric": True}, {"name": "int4"},
                           {"name": "int2"}, {"name": "int8", "group": 16}],
               "suites": [{"name": "fidelity", "windows": 1, "prefix_tokens": 160,
                           "eval_tokens": 16},
                          {"name": "latency", "prompt_tokens": 40, "new_tokens": 3,
                           "repeats": 1}]}
        kl = {}
        for attention in ("paged", "reference"):
            res = self.run_ok(dict(cfg, attention=attention))
            path, report = self.report_from(res)
            self.assertEqual(report["config"]["attention"], attention)
            cells = {(c["suite"], c["method"]["name"], c["method"].get("symmetric")): c
                     for c in report["cells"]}
            int8 = cells[("fidelity", "int8", None)]
            if attention == "paged":
                self.assertEqual(res.returncode, 1, res.stderr)
                self.assertEqual(int8["status"], "failed")
                self.assertIn("group != 32", int8["error"])
            ok = [c for c in report["cells"] if c["status"] == "ok"]
            self.assertEqual(len(ok), 10 if attention == "paged" else 12, res.stdout + res.stderr)
            for name, symmetric in (("kivi-2", None), ("int4", False), ("int2", None)):
                kl[attention, name] = cells[("fidelity", name, symmetric)]["summary"]["kl_mean"]
            check = subprocess.run(VALIDATE + [str(path)], capture_output=True, text=True)
            self.assertEqual(check.returncode, 0, check.stdout)
        for name in ("kivi-2", "int4", "int2"):
            self.assertGreater(kl["paged", name], 0)
            self.assertAlmostEqual(kl["paged", name], kl["reference", name],
                                   delta=1e-6 * kl["reference", name] + 1e-9)

    def test_bfloat16_compute_halves_the_weights_and_is_reported(self):
        cfg = {"model": {"preset": "tiny-llama", "random_init": True},
               "methods": [{"name": "full"}],
               "suites": [{"name": "latency", "prompt_tokens": 32, "new_tokens": 3,
                           "repeats": 1}]}
        weights = {}
        for dtype in ("float32", "bfloat16"):
            cfg["model"]["compute_dtype"] = dtype
            res = self.run_ok(cfg)
            self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
            path, report = self.report_from(res)
            self.assertEqual(report["model"]["compute_dtype"], dtype)
            self.assertEqual(report["model"]["device"], "cpu")
            self.assertEqual(report["config"]["model"]["compute_dtype"], dtype)
            weights[dtype] = report["model"]["weight_bytes"]
            check = subprocess.run(VALIDATE + [str(path)], capture_output=True, text=True)
            self.assertEqual(check.returncode, 0, check.stdout)
        self.assertEqual(weights["bfloat16"] * 2, weights["float32"])
        cfg["model"]["compute_dtype"] = "float16"  # no fp16 matmul on the CPU: a config error
        res = self.run_ok(cfg)
        self.assertEqual(res.returncode, 2, res.stdout + res.stderr)
        self.assertIn("model.compute_dtype", res.stderr)

    def test_paged_attention_runs_retention_methods_like_the_reference(self):
        # Retention over the paged cache (retained positions read by index, pages freed behind
        # StreamingLLM's window; H2O, TOVA and ScissorHands from each step's attention; Quest's
        # pages read by index): the
        # same positions are kept as with the reference backend and
        # the fp16 values are the same, so fidelity agrees; the latency cell reports the kept
        # tokens and its measured bytes fall below the full cache's.
        cfg = {"model": {"preset": "tiny-llama", "random_init": True, "dtype": "float16"},
               "methods": [{"name": "full"},
                           {"name": "streamingllm", "sinks": 4, "window": 60},
                           {"name": "snapkv", "budget": 64, "window": 8},
                           {"name": "h2o", "heavy": 30, "recent": 34},
                           {"name": "tova", "budget": 64},
                           {"name": "scissorhands", "budget": 64, "recent": 16},
                           {"name": "quest", "budget": 64, "dense_layers": 1}],
               "suites": [{"name": "fidelity", "windows": 1, "prefix_tokens": 160,
                           "eval_tokens": 16},
                          {"name": "latency", "prompt_tokens": 200, "new_tokens": 4,
                           "repeats": 1}]}
        names = ("streamingllm", "snapkv", "h2o", "tova", "scissorhands", "quest")
        kl = {}
        for attention in ("paged", "reference"):
            res = self.run_ok(dict(cfg, attention=attention))
            self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
            path, report = self.report_from(res)
            cells = {(c["suite"], c["method"]["name"]): c for c in report["cells"]}
            for name in names:
                kl[attention, name] = cells[("fidelity", name)]["summary"]["kl_mean"]
            if attention == "paged":
                stream = cells[("latency", "streamingllm")]["summary"]["kv_memory"]
                full = cells[("latency", "full")]["summary"]["kv_memory"]
                self.assertLess(stream["kept_tokens"]["fraction"], 0.5)
                self.assertLess(stream["measured"]["total"], 0.6 * full["measured"]["total"])
            check = subprocess.run(VALIDATE + [str(path)], capture_output=True, text=True)
            self.assertEqual(check.returncode, 0, check.stdout)
        for name in names:
            self.assertGreater(kl["paged", name], 0)
            self.assertAlmostEqual(kl["paged", name], kl["reference", name],
                                   delta=1e-4 * kl["reference", name] + 1e-9)

    def test_paged_attention_runs_the_low_rank_codecs_on_latent_pages(self):
        # kvproj on the paged cache: latent coefficient pages, attention in the latent space;
        # Palu: latent pages of its pre-RoPE keys, reconstructed and rotated when read (the
        # prepare step fits the bases first). The same fp16 latents as the reference backend
        # stores, so fidelity agrees; with StreamingLLM kvproj keeps the same positions, and so
        # does Palu under SnapKV (its kernel reads the kept tokens by index) and under H2O
        # evicting at every decode step (each step's attention recorded as the reference does).
        kvproj = {"name": "kvproj", "calib_prompts": 2, "calib_tokens": 64, "rank": 32}
        palu = {"name": "palu", "rank": 32}
        cfg = {"model": {"preset": "tiny-llama", "random_init": True, "dtype": "float16"},
               "methods": [kvproj,
                           {"name": "streamingllm", "sinks": 4, "window": 60, "codec": kvproj},
                           palu, {"name": "snapkv", "budget": 64, "window": 8, "codec": palu},
                           {"name": "h2o", "heavy": 32, "recent": 32, "codec": palu}],
               "suites": [{"name": "fidelity", "windows": 1, "prefix_tokens": 160,
                           "eval_tokens": 16}]}
        kl = {}
        names = ("kvproj", "streamingllm", "palu", "snapkv", "h2o")
        for attention in ("paged", "reference"):
            res = self.run_ok(dict(cfg, attention=attention))
            self.assertEqual(res.returncode, 0, res.stderr)
            path, report = self.report_from(res)
            cells = {c["method"]["name"]: c for c in report["cells"]}
            for name in names:
                self.assertEqual(cells[name]["status"], "ok", res.stdout + res.stderr)
                kl[attention, name] = cells[name]["summary"]["kl_mean"]
            check = subprocess.run(VALIDATE + [str(path)], capture_output=True, text=True)
            self.assertEqual(check.returncode, 0, check.stdout)
        self.assert_paged_kl_like_reference(kl, names)

    def test_paged_attention_runs_gear_on_its_blocks_like_the_reference(self):
        # GEAR on the paged path: its blocks made with ATen ops where the cache lives and read in
        # place. The same codes, outliers and factors as the reference backend's store, so
        # fidelity agrees and the latency cell's measured bytes equal the reference's; SnapKV
        # over GEAR selects after the prefill and stores the kept tokens afresh, as the
        # reference does, and so does H2O evicting once after the prefill (its scores from the
        # prefill's attention over the reconstructed keys, as the reference records them).
        cfg = {"model": {"preset": "tiny-llama", "random_init": True, "dtype": "float16"},
               "methods": [{"name": "gear"}, {"name": "gear-4"},
                           {"name": "snapkv", "budget": 64, "codec": "gear-4"},
                           {"name": "h2o", "heavy": 32, "recent": 32, "evict": "after_prefill",
                            "codec": "gear"}],
               "suites": [{"name": "fidelity", "windows": 1, "prefix_tokens": 160,
                           "eval_tokens": 16},
                          {"name": "latency", "prompt_tokens": 100, "new_tokens": 30,
                           "repeats": 1}]}
        names = ("gear", "gear-4", "snapkv", "h2o")
        kl, measured = {}, {}
        for attention in ("paged", "reference"):
            res = self.run_ok(dict(cfg, attention=attention))
            self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
            path, report = self.report_from(res)
            cells = {(c["suite"], c["method"]["name"]): c for c in report["cells"]}
            for name in names:
                fid, lat = cells[("fidelity", name)], cells[("latency", name)]
                self.assertEqual(fid["status"], "ok", res.stdout + res.stderr)
                kl[attention, name] = fid["summary"]["kl_mean"]
                measured[attention, name] = lat["summary"]["kv_memory"]["measured"]
            check = subprocess.run(VALIDATE + [str(path)], capture_output=True, text=True)
            self.assertEqual(check.returncode, 0, check.stdout)
        self.assert_paged_kl_like_reference(kl, names)
        # The paged cache holds each sequence's exact buffers whole (the rows not in use are
        # padding), the reference cache the rows in use: at their peaks (the paged one's at
        # the end, the reference's maybe just before a compression) the paged cache holds at
        # least as much, of which its tokens no more. (gear_block_cache_test compares the two
        # at the same steps to the byte.)
        for name in names:
            paged, ref = measured["paged", name], measured["reference", name]
            self.assertEqual(ref["padding"], 0, msg=name)
            self.assertGreater(paged["padding"], 0, msg=name)
            self.assertGreaterEqual(paged["total"], ref["total"], msg=name)
            self.assertLessEqual(paged["total"] - paged["padding"], ref["total"], msg=name)
        total = {k: v["total"] for k, v in measured.items()}
        self.assertLess(total["paged", "snapkv"], total["paged", "gear-4"])
        self.assertLess(total["paged", "h2o"], total["paged", "gear"])

    def test_paged_kernel_path_on_the_cpu_runs_like_the_cpu_path(self):
        # KVBENCH_PAGED_PATH=kernels: whole runs take the paged cache's GPU path on the CPU
        # (block tables, one decode call per batched step, retained lists, kernel scores, the
        # kernels' host references), so the engine's batching over it is checked without a GPU.
        # Its decode steps round queries to fp16 as the kernels do: fidelity within 5%.
        cfg = {"model": {"preset": "tiny-qwen3", "random_init": True, "dtype": "float16"},
               "attention": "paged",
               "methods": [{"name": "full"}, {"name": "int4"}, {"name": "kivi-2"},
                           {"name": "streamingllm", "sinks": 4, "window": 60},
                           {"name": "h2o", "heavy": 30, "recent": 34},
                           {"name": "quest", "budget": 64, "dense_layers": 1},
                           {"name": "kvproj", "rank": 64, "calib_prompts": 2,
                            "calib_tokens": 64},
                           {"name": "palu", "rank": 32}, {"name": "gear-4"},
                           {"name": "snapkv", "budget": 64, "codec": {"name": "palu",
                                                                      "rank": 32}}],
               "suites": [{"name": "fidelity", "windows": 1, "prefix_tokens": 160,
                           "eval_tokens": 16},
                          {"name": "throughput", "batch": [3], "prompt_tokens": [100],
                           "new_tokens": [6], "repeats": 1}]}
        names = ("int4", "kivi-2", "streamingllm", "h2o", "quest", "kvproj", "palu", "gear-4",
                 "snapkv")
        kl, ids = {}, {}
        for path in ("cpu", "kernels"):
            res = self.run_on_path(cfg, path)
            self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
            _, report = self.report_from(res)
            # The report says which code path its numbers came from.
            self.assertEqual(report["environment"]["overrides"].get("KVBENCH_PAGED_PATH"),
                             "kernels" if path == "kernels" else None)
            cells = {(c["suite"], c["method"]["name"]): c for c in report["cells"]}
            ids[path] = {c["id"] for c in report["cells"]}
            for name in names:
                kl[path, name] = cells[("fidelity", name)]["summary"]["kl_mean"]
        # The two paths measure different numbers: their cells never share an id, so --resume
        # and compare keep them apart.
        self.assertFalse(ids["cpu"] & ids["kernels"])
        for name in names:
            self.assertGreater(kl["kernels", name], 0)
            self.assertAlmostEqual(kl["kernels", name], kl["cpu", name],
                                   delta=0.05 * kl["cpu", name] + 1e-6, msg=name)

    def test_paged_snapkv_holds_the_tokens_it_keeps(self):
        # A per-head selection made once after the prefill is compacted on the paged path: the
        # measured bytes are the kept tokens' in whole pages (no nominal_mismatch), far below
        # the full cache's, on both of its code paths.
        cfg = {"model": {"preset": "tiny-qwen3", "random_init": True, "dtype": "float16"},
               "attention": "paged",
               "methods": [{"name": "full"}, {"name": "snapkv", "budget": 64}],
               "suites": [{"name": "latency", "prompt_tokens": 600, "new_tokens": 4,
                           "repeats": 1}]}
        for path in ("cpu", "kernels"):
            _, report = self.report_from(self.run_on_path(cfg, path))
            memory = {c["method"]["name"]: c["summary"]["kv_memory"] for c in report["cells"]}
            snap, full = memory["snapkv"], memory["full"]
            self.assertFalse(snap["nominal_mismatch"], (path, snap))
            self.assertLess(snap["measured"]["total"], 0.2 * full["measured"]["total"], path)

    def test_every_preset_but_fp32_runs_on_the_kernel_path(self):
        # Issue 11: the engine's GPU path serves every method. Each preset `list` names, at its
        # defaults (Palu's rank 0.7 * 64 = 45 in rows of 64, kvproj's 32 in rows of 64), takes
        # the paged cache's kernel path on the CPU; fp32 storage has no GPU format and says so.
        listed = kvbench("list", "methods").stdout.splitlines()
        presets = [l.split(" - ")[0].strip() for l in listed
                   if l.startswith("  ") and not l.startswith("   ") and " - " in l]
        self.assertIn("palu-70", presets)
        self.assertIn("snapkv-2048", presets)
        cfg = {"model": {"preset": "tiny-qwen3", "random_init": True, "dtype": "float16"},
               "attention": "paged", "methods": [{"name": p} for p in presets],
               "suites": [{"name": "throughput", "batch": [2], "prompt_tokens": [600],
                           "new_tokens": [4], "repeats": 1}]}
        _, report = self.report_from(self.run_on_path(cfg, "kernels"))
        failed = {c["method"]["name"]: c["error"] for c in report["cells"] if c["status"] != "ok"}
        self.assertEqual(list(failed), ["fp32"], failed)
        self.assertIn("no paged format", failed["fp32"])

    def test_low_rank_methods_report_their_untimed_prepare_step(self):
        cfg = {"model": {"preset": "tiny-llama", "random_init": True},
               "methods": [{"name": "full"}, {"name": "palu"},
                           {"name": "kvproj", "calib_prompts": 2, "calib_tokens": 64},
                           {"name": "snapkv", "budget": 40, "codec": "palu-70"}],
               "suites": [{"name": "latency", "prompt_tokens": 64, "new_tokens": 4,
                           "repeats": 1},
                          {"name": "throughput", "batch": [1], "prompt_tokens": [64],
                           "new_tokens": [4], "repeats": 1}]}
        res = self.run_ok(cfg)
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        path, report = self.report_from(res)
        cells = {c["id"].split(".")[0] + "." + c["method"]["name"]: c for c in report["cells"]}
        self.assertNotIn("preparation", cells["latency.full"])
        for name in ("palu", "kvproj", "snapkv"):
            lat, thr = cells["latency." + name], cells["throughput." + name]
            prep = lat["preparation"]
            self.assertIs(prep["timed"], False)
            self.assertEqual(prep["cell"], lat["id"])  # ran in the first cell, reused after
            self.assertEqual(thr["preparation"], prep)
            self.assertFalse(lat["summary"]["kv_memory"]["nominal_mismatch"])
        self.assertEqual(cells["latency.kvproj"]["preparation"]["calibration"],
                         {"prompts": 2, "tokens_per_prompt": 64, "tokens": 128,
                          "source": "text", "seed": 0})
        self.assertIsNone(cells["latency.palu"]["preparation"]["calibration"])
        # palu-70 is a Palu codec (its own entry, prepared once for its own cells).
        self.assertEqual(cells["latency.snapkv"]["preparation"]["codec"], "palu")
        self.assertLess(cells["latency.snapkv"]["summary"]["kv_memory"]["kept_tokens"]["max"], 64)
        check = subprocess.run(VALIDATE + [str(path)], capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout)
        # The model-free kernels suite cannot prepare a low-rank codec: a config error, at
        # validate as at run, before any cell runs.
        bad = {"methods": [{"name": "palu"}], "suites": [TINY_SUITE]}
        self.assert_one_line_error(
            kvbench("validate", "--config", self.write_config(bad)), 2,
            "config: suites[0] x methods[0]: kernels: codec 'palu' is fitted to a model")
        self.assert_one_line_error(self.run_ok(bad), 2, "fitted to a model in a prepare step")
        # Plain h2o's budgets are fractions of the prompt, which its synthetic contexts lack.
        bad = {"methods": [{"name": "h2o"}], "suites": [TINY_SUITE]}
        self.assert_one_line_error(
            kvbench("validate", "--config", self.write_config(bad)), 2,
            "config: suites[0] x methods[0]: kernels: retention policy 'h2o' sizes its budget as "
            "a fraction of the prompt")

    def test_dry_run_estimates_memory_and_refuses_what_cannot_fit(self):
        cfg = {"model": {"preset": "tiny-llama", "random_init": True},
               "suites": [{"name": "throughput", "batch": [1], "prompt_tokens": [16]}]}
        res = self.run_ok(cfg, "--dry-run")
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("est. memory", res.stdout)
        huge = dict(cfg, suites=[{"name": "throughput", "batch": [64],
                                  "prompt_tokens": [1000000]}])
        res = self.run_ok(huge, "--dry-run")
        self.assert_one_line_error(res, 1, "plan: cell throughput.full.")
        self.assertIn("of memory is available", res.stderr)
        self.assertFalse((self.dir / "out").exists())

    def corrupt_cases(self):
        def truncated(d):
            f = d / "model.safetensors"
            f.write_bytes(f.read_bytes()[:-100])

        def header_beyond_file(d):
            f = d / "model.safetensors"
            raw = f.read_bytes()
            f.write_bytes(struct.pack("<Q", len(raw) + 10) + raw[8:])

        def offsets_out_of_range(d):
            header, data = read_safetensors(d / "model.safetensors")
            header["model.norm.weight"]["data_offsets"][1] = len(data) + 64
            write_safetensors(d / "model.safetensors", header, data)

        def wrong_dtype(d):
            header, data = read_safetensors(d / "model.safetensors")
            header["model.norm.weight"]["dtype"] = "F64"
            write_safetensors(d / "model.safetensors", header, data)

        def wrong_shape(d):
            config = json.loads((d / "config.json").read_text())
            config["intermediate_size"] = 320
            (d / "config.json").write_text(json.dumps(config))

        def missing_shard(d):
            header, _ = read_safetensors(d / "model.safetensors")
            names = [n for n in header if n != "__metadata__"]
            weight_map = {n: "model-00001-of-00002.safetensors" for n in names}
            weight_map["lm_head.weight"] = "model-00002-of-00002.safetensors"
            (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
            (d / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {}, "weight_map": weight_map}))

        def unsupported_architecture(d):
            config = json.loads((d / "config.json").read_text())
            config["architectures"] = ["FalconForCausalLM"]
            (d / "config.json").write_text(json.dumps(config))

        return {
            "truncated file": (truncated, "model.safetensors"),
            "header length beyond the file": (header_beyond_file, "header length"),
            "offsets out of range": (offsets_out_of_range, "out of range"),
            "wrong dtype": (wrong_dtype, "F64"),
            "wrong shape": (wrong_shape, "expected [320, 128]"),
            "missing shard": (missing_shard, "model-00002-of-00002.safetensors"),
            "unsupported architecture": (unsupported_architecture,
                                         "unsupported architecture: FalconForCausalLM"),
        }

    def test_unused_checkpoint_tensors_are_named(self):
        # config.json says 3 layers, the weights hold 4: the fourth is named, not dropped
        # silently (transformers warns the same way).
        d = self.make_model()
        config = json.loads((d / "config.json").read_text())
        config["num_hidden_layers"] = 3
        (d / "config.json").write_text(json.dumps(config))
        cfg = {"model": {"path": str(d)},
               "suites": [{"name": "latency", "prompt_tokens": 8, "new_tokens": 2,
                           "warmup": 0, "repeats": 1}]}
        res = kvbench("run", "--config", self.write_config(cfg), "--out", str(self.dir / "out"))
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("tensor(s) of the checkpoint are not used by its config.json "
                      "(model.layers.3.", res.stderr)

    def test_fidelity_fails_a_method_whose_logits_overflow(self):
        # Layer 0's value projection at 65536 everywhere: bf16 (the model's and the full
        # cache's dtype) holds its values, an fp16 cache overflows to inf and the logits turn
        # NaN. That cell must fail, not score KL 0 and land on the Pareto front.
        d = self.make_model()
        header, data = read_safetensors(d / "model.safetensors")
        name = "model.layers.0.self_attn.v_proj.weight"
        self.assertEqual(header[name]["dtype"], "BF16")
        b, e = header[name]["data_offsets"]
        data = data[:b] + b"\x80\x47" * ((e - b) // 2) + data[e:]
        write_safetensors(d / "model.safetensors", header, data)
        cfg = {"model": {"path": str(d)}, "methods": [{"name": "full"}, {"name": "fp16"}],
               "suites": [{"name": "fidelity", "windows": 1, "prefix_tokens": 16,
                           "eval_tokens": 4}]}
        res = kvbench("run", "--config", self.write_config(cfg), "--out",
                      str(self.dir / "out"), "--log-level", "error")
        self.assertEqual(res.returncode, 1, res.stdout + res.stderr)
        _, report = self.report_from(res)
        status = {c["method"]["name"]: c for c in report["cells"]}
        self.assertEqual(status["full"]["status"], "ok")
        self.assertEqual(status["fp16"]["status"], "failed")
        self.assertIn("the method's logits are not finite", status["fp16"]["error"])

    def test_fidelity_on_a_trained_model_warns_about_a_random_id_corpus(self):
        # A trained model's perplexity on random ids is noise's; text is what it was made for.
        model = str(ROOT / "assets" / "models" / "kvbench-retrieval-1m")
        suite = {"name": "fidelity", "windows": 1, "prefix_tokens": 16, "eval_tokens": 4}
        text = (ROOT / "README.md").read_text()[:4000]
        cfg = {"model": {"path": model}, "threads": 1,
               "suites": [suite, dict(suite, text=text)]}
        res = self.run_ok(cfg)
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        _, report = self.report_from(res)
        ids, words = report["cells"]
        self.assertEqual(ids["summary"]["corpus"], "synthetic token ids")
        self.assertTrue(any("the corpus is random token ids" in w for w in ids["warnings"]),
                        ids["warnings"])
        self.assertFalse(any("random token ids" in w for w in words["warnings"]),
                         words["warnings"])

    def test_corrupt_checkpoints_fail_with_one_line(self):
        for name, (corrupt, fragment) in self.corrupt_cases().items():
            with self.subTest(name):
                d = self.make_model()
                corrupt(d)
                res = self.run_model(d)
                self.assert_one_line_error(res, 1, fragment)
                self.assertIn("failed", res.stderr)
                _, report = self.report_from(res)  # the failure is recorded in the report
                self.assertEqual(report["cells"][0]["status"], "failed")
                self.assertIn(fragment, report["cells"][0]["error"])
                shutil.rmtree(d)


class TokenizeCliTest(unittest.TestCase):
    """kvbench tokenize on the tokenizer that make-model writes next to the checkpoint."""

    assert_one_line_error = CliTest.assert_one_line_error  # not a subclass: no CliTest tests

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="kvbench_tok_")
        self.addCleanup(self.tmp.cleanup)
        self.dir = pathlib.Path(self.tmp.name)
        self.model = self.dir / "tiny-llama"
        res = kvbench("make-model", "--preset", "tiny-llama", "--out", str(self.model))
        self.assertEqual(res.returncode, 0, res.stderr)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            self.assertTrue((self.model / f).is_file(), f)

    def tokenize(self, *args):
        return kvbench("tokenize", "--model", str(self.model), *args)

    def test_prints_the_count_and_with_ids_a_json_array(self):
        res = self.tokenize("--text", "Hello world, the cache grows.")
        self.assertEqual(res.returncode, 0, res.stderr)
        count = int(res.stdout.strip())
        self.assertGreater(count, 0)
        res = self.tokenize("--text", "Hello world, the cache grows.", "--ids")
        self.assertEqual(res.returncode, 0, res.stderr)
        lines = res.stdout.splitlines()
        ids = json.loads(lines[1])
        self.assertEqual(int(lines[0]), len(ids))
        self.assertEqual(len(ids), count)
        self.assertTrue(all(0 <= i < 512 for i in ids))

    def test_file_input_and_special_tokens(self):
        path = self.dir / "prompt.txt"
        path.write_text("caf\u00e9 \u65e5\u672c <|eot_id|>\n", encoding="utf-8")
        res = self.tokenize("--file", str(path), "--ids")
        self.assertEqual(res.returncode, 0, res.stderr)
        ids = json.loads(res.stdout.splitlines()[1])
        self.assertIn(5, ids)  # <|eot_id|> is one token, not split into bytes

    def test_chat_formats(self):
        res = self.tokenize("--text", "Hi", "--chat", "llama3", "--ids")
        self.assertEqual(res.returncode, 0, res.stderr)
        ids = json.loads(res.stdout.splitlines()[1])
        self.assertEqual(ids[:2], [1, 3])  # <|begin_of_text|><|start_header_id|>
        res = self.tokenize("--text", "Hi", "--chat", "chatml", "--ids")
        self.assertEqual(json.loads(res.stdout.splitlines()[1])[0], 6)  # <|im_start|>
        self.assertEqual(self.tokenize("--text", "Hi", "--chat", "vicuna").returncode, 2)

    def test_usage_and_missing_tokenizer_errors(self):
        self.assertEqual(self.tokenize().returncode, 2)
        self.assertEqual(self.tokenize("--text", "a", "--file", "b").returncode, 2)
        res = kvbench("tokenize", "--model", str(self.dir / "absent"), "--text", "x")
        # Input the options name that cannot be read or used: exit 2, as a usage error.
        self.assert_one_line_error(res, 2, "tokenizer.json: cannot read the file")
        res = self.tokenize("--file", str(self.dir))  # a folder, not a file
        self.assert_one_line_error(res, 2, "is a directory, not a file")
        res = self.tokenize("--file", str(self.dir / "absent.txt"))
        self.assert_one_line_error(res, 2, "tokenize: cannot read " + str(self.dir / "absent.txt"))
        bad = self.dir / "bad.txt"
        bad.write_bytes(b"ok \xff\xfe")
        res = self.tokenize("--file", str(bad))
        self.assert_one_line_error(res, 2, "is not valid UTF-8 text")
        (self.model / "tokenizer.json").write_text("{not json")
        res = self.tokenize("--text", "x")
        self.assert_one_line_error(res, 2, "tokenizer.json: invalid JSON: parse error")
        self.assertNotIn("json.exception", res.stderr)
        (self.model / "tokenizer.json").write_text(json.dumps(
            {"model": {"type": "WordPiece", "vocab": {}}}))
        res = self.tokenize("--text", "x")
        self.assert_one_line_error(res, 2, "unsupported tokenizer model: WordPiece")


class TrainCliTest(CliCase):
    """kvbench train: a few steps of a tiny recipe, resume, and recipe errors."""

    def recipe(self, **over):
        model = json.loads((ROOT / "configs" / "train-retrieval-1m.json").read_text())["model"]
        model.update({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2})
        r = {"model": model, "seed": 3, "threads": 1, "warmup_steps": 1, "eval_every": 2,
             "eval_samples": 1, "checkpoint_every": 2,
             "tasks": [{"task": "passkey"}],
             "stages": [{"steps": 3, "batch": 2, "min_tokens": 250, "max_tokens": 260}],
             "evals": [{"task": "passkey", "target_tokens": 256, "max_new_tokens": 8}]}
        r.update(over)
        return self.write_config(r, "recipe.json")

    def test_trains_checkpoints_resumes_and_loads(self):
        out = self.dir / "model"
        res = kvbench("train", "--config", self.recipe(), "--out", str(out), "--until", "1")
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        self.assertIn("trained 1 of 3 steps", res.stdout)
        # Forgetting --resume does not start the run over in its directory.
        log_before = (out / "train_log.jsonl").read_bytes()
        res = kvbench("train", "--config", self.recipe(), "--out", str(out))
        self.assert_one_line_error(res, 2, "already holds a run")
        self.assertEqual((out / "train_log.jsonl").read_bytes(), log_before)
        res = kvbench("train", "--config", self.recipe(), "--out", str(out), "--resume")
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        self.assertIn("trained 3 of 3 steps", res.stdout)
        for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json", "train_state.safetensors", "train_log.jsonl"):
            self.assertTrue((out / f).is_file(), f)
        log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
        self.assertIn("recipe", log[0])
        evals = [l for l in log if "eval" in l]
        self.assertEqual([l["step"] for l in evals], [1, 2, 3])
        self.assertEqual(json.loads((out / "config.json").read_text())["kvbench"]["step"], 3)
        # Not a TTY: no progress bar, only log lines.
        self.assertNotIn("\r", res.stderr)
        # Resuming a finished run trains nothing and keeps the weights.
        before = (out / "model.safetensors").read_bytes()
        res = kvbench("train", "--config", self.recipe(), "--out", str(out), "--resume")
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertEqual((out / "model.safetensors").read_bytes(), before)
        # The checkpoint runs under the normal loader with an eviction method.
        cfg = {"model": {"path": str(out)},
               "methods": [{"name": "full"}, {"name": "snapkv", "budget": 64}],
               "suites": [{"name": "accuracy", "task": "passkey", "samples": 1,
                           "target_tokens": 256, "max_new_tokens": 4}]}
        res = self.run_ok(cfg)
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)

    def test_recipe_errors_are_one_line_exit_2(self):
        res = kvbench("train", "--config", self.recipe(lr="fast"), "--out", str(self.dir / "m"))
        self.assert_one_line_error(res, 2, "train.lr")
        res = kvbench("train", "--config", self.recipe(tasks=[{"task": "passkeys"}]),
                      "--out", str(self.dir / "m"))
        self.assert_one_line_error(res, 2, "train.tasks[0].task")
        res = kvbench("train", "--config", self.recipe(), "--out", str(self.dir / "none"),
                      "--resume")
        self.assert_one_line_error(res, 1, "nothing to resume")
        res = kvbench("train", "--config", self.recipe(), "--out", str(self.dir / "m"),
                      "--threads", "0")
        self.assertEqual(res.returncode, 2, res.stderr)
        # A run stopped before its first checkpoint left a log only: not "--resume continues
        # it", which would then say there is nothing to resume.
        stopped = self.dir / "stopped"
        stopped.mkdir()
        (stopped / "train_log.jsonl").write_text('{"step": 1}\n')
        res = kvbench("train", "--config", self.recipe(), "--out", str(stopped))
        self.assert_one_line_error(res, 2, "but no checkpoint to resume")
        self.assertNotIn("--resume continues", res.stderr)
        # Usage errors before any step: --until below 1, an --out that is a file, a directory
        # or a run config as the recipe.
        for until, why in (("0", "expected a number >= 1, got 0"),
                            ("010", "expected a decimal integer without leading zeros"),
                            ("1099511627777", "expected a number <= 1099511627776")):
            res = kvbench("train", "--config", self.recipe(), "--out", str(self.dir / "m"),
                          "--until", until)
            self.assertEqual(res.returncode, 2, res.stderr)
            self.assertIn(why, res.stderr)
            self.assertLess(len(res.stderr), 300, res.stderr)
        afile = self.dir / "afile"
        afile.write_text("x")
        res = kvbench("train", "--config", self.recipe(), "--out", str(afile))
        self.assert_one_line_error(res, 2, "--out: cannot create")
        res = kvbench("train", "--config", str(self.dir), "--out", str(self.dir / "m"))
        self.assert_one_line_error(res, 2, "is a directory, not a training recipe")
        run_config = self.write_config({"suites": [{"name": "kernels"}]}, "run.json")
        res = kvbench("train", "--config", run_config, "--out", str(self.dir / "m"))
        self.assert_one_line_error(res, 2, "this is a run config")


if __name__ == "__main__":
    unittest.main(verbosity=2)
