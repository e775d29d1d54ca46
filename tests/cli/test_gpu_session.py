#!/usr/bin/env python3
"""scripts/gpu_session.sh run here, without a GPU, over stand-ins for what it runs there.

A lent GPU machine is rare and gives a session ~15 device-minutes; a slip in the session
script's own logic (a stage never started, a decode loop or multiply not handed to the suites,
a marker waited for that nothing writes, a bundle missing what ran) would cost that run. So
this test copies the script and the Python helpers it calls into a scratch tree whose binaries,
full build, PyTorch peers and CUDA tools (nvidia-smi, cuobjdump, compute-sanitizer, ncu) are
small shell stand-ins that record what they were given, then checks the stages' order and exit
codes, what the suites received, what the bundle holds, and the script's answers to a failed
kernel test and a failed CLI build. What the stand-ins cannot show: anything about the real
programs (their own tests do that) or the device tool's transfer."""
import json
import os
import pathlib
import shutil
import subprocess
import tarfile
import tempfile
import textwrap
import unittest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# The decode bench's lines: fp16 fastest on v2b, kivi-4 on v4, the retained kernel at 4 tokens.
DECODE_BENCH = [
    {"format": "fp16", "loop": "v2", "us_per_step": 500},
    {"format": "fp16", "loop": "v2b", "us_per_step": 480},
    {"format": "kivi-4", "loop": "v3", "us_per_step": 500},
    {"format": "kivi-4", "loop": "v4", "us_per_step": 300},
    {"format": "kept-512", "loop": "-", "us_per_step": 100},
    {"format": "kept-512-t4", "loop": "-", "us_per_step": 60},
    {"format": "kept-2k", "loop": "-", "us_per_step": 300},
    {"format": "kept-2k-t4", "loop": "-", "us_per_step": 200},
]


def executable(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(text))
    path.chmod(0o755)


def out_arg():
    # Shell: the value after --out, or "" (the stand-ins write their lines there).
    return 'out=""; while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done\n'


class GpuSessionDryRunTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="kvbench_gpu_session_")
        self.dir = pathlib.Path(self.tmp.name)
        self.repo = self.dir / "repo"
        scripts = self.repo / "scripts"
        scripts.mkdir(parents=True)
        for name in ("gpu_session.sh", "best_decode_loops.py", "best_model_gemm.py"):
            shutil.copy(ROOT / "scripts" / name, scripts / name)
        (self.repo / "configs").mkdir()
        for name in ("gpu-e2e.json", "gpu-kernels.json", "gpu-suites.json"):
            shutil.copy(ROOT / "configs" / name, self.repo / "configs" / name)
        self.make_stand_ins()

    def tearDown(self):
        self.tmp.cleanup()

    def make_stand_ins(self):
        gpu, bin_dir = self.repo / "build-gpu", self.dir / "bin"
        bench = "\n".join(json.dumps({"batch": 16, "context": 32768, **r}) for r in DECODE_BENCH)
        # Kernel tests: names when listed (the script counts the retained and GEMM tests among
        # those its filter runs), else a result with the exit code FAKE_TESTS_RC.
        executable(gpu / "gpu_tests", """\
            if [[ " $* " == *" --gtest_list_tests "* ]]; then
              printf 'RetainedDecodeGpuTest.\\n  SixteenBit\\nSmallGemmGpuTest.\\n  Shapes\\n'
              exit 0
            fi
            echo "gpu_tests $*"; exit "${FAKE_TESTS_RC:-0}"
            """)
        executable(gpu / "gpu_decode_bench", out_arg() + f"""\
            [ -n "$out" ] && printf '%s\\n' '{bench}' > "$out"
            echo "decode bench $*"
            """)
        executable(gpu / "summed_attention_bench", out_arg() + 'echo "{}" > "$out"\n')
        executable(gpu / "small_gemm_bench", out_arg() + """\
            echo '{"batch": 16, "matmul": "step", "how": "small_gemm", "us": 5000}' > "$out"
            echo "step 5000 us"
            """)
        for o in ("decode_attention", "palu_decode", "gear_decode", "small_gemm"):
            (gpu / f"{o}.o").write_text("object")
        # The PyTorch peers (no torch here): their output lines only.
        (self.repo / "scripts" / "gpu_sdpa_peer.py").write_text(
            "import sys\nprint('sdpa peer', sys.argv[1:])\n")
        (self.repo / "scripts" / "gpu_model_peer.py").write_text(textwrap.dedent("""\
            import json, sys
            out = sys.argv[sys.argv.index("--out") + 1]
            with open(out, "w") as f:
                f.write(json.dumps({"batch": 16, "matmul": "step", "how": "mm_t", "us": 7000}) + "\\n")
            print("model peer")
            """))
        # The full build: each target a stand-in that records its arguments and the settings
        # the script hands it; FAKE_CLI_FAIL=1 fails the CLI's build.
        records = self.dir / "records"
        records.mkdir()
        executable(self.repo / "scripts" / "gpu_full_build.sh", f"""\
            dir=$1
            mkdir -p "$dir/tests"
            stand_in() {{  # path, then the body after the settings are recorded
              printf '#!/usr/bin/env bash\\n%s\\n%s\\n' \\
                'env | grep -E "^KVBENCH_" | sort > {records}/$(basename $0)-$1-$(date +%s%N).env; echo "$0 $*" >> {records}/calls' \\
                "$2" > "$1"
              chmod +x "$1"
            }}
            case "$KVBENCH_TARGETS" in
              kvbench)
                [ "${{FAKE_CLI_FAIL:-0}}" = 1 ] && {{ echo "compile error"; exit 2; }}
                stand_in "$dir/kvbench" 'if [ "$1" = run ]; then
                  while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done
                  mkdir -p "$out"; echo "{{}}" > "$out/report.json"
                else echo "| report |"; fi' ;;
              host_ops_bench) stand_in "$dir/host_ops_bench" 'echo "{{\\"method\\": \\"$5\\"}}"' ;;
              kvbench_tests) stand_in "$dir/tests/kvbench_tests" 'echo "[  PASSED  ] 1 test."' ;;
            esac
            echo "built $KVBENCH_TARGETS"
            """)
        # CUDA's tools: the sanitizer runs what follows its options; the others print.
        executable(bin_dir / "nvidia-smi", 'echo "NVIDIA H200, 580.159, 1980, 143771 MiB"\n')
        executable(bin_dir / "cuobjdump", 'echo "SASS of $*"\n')
        executable(bin_dir / "ncu", 'echo "ncu $*"\n')
        executable(bin_dir / "compute-sanitizer", """\
            while [[ "$1" == --* ]]; do shift 2; done
            "$@"
            """)
        for tool in ("nvcc", "cmake", "ninja"):
            executable(bin_dir / tool, "true\n")

    def session(self, **env):
        out, logs = self.dir / "out", self.dir / "logs"
        shutil.rmtree(out, ignore_errors=True)
        # Settings of the caller's shell (a GPU_SKIP, a KVBENCH_DECODE_LOOP) would change what
        # the script does: none reach it but the test's own. Its scratch paths are the test's.
        run_env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("GPU_", "KVBENCH_", "FAKE_"))}
        run_env.update(OUT=str(out), LOGS=str(logs), SASS=str(self.dir / "sass"),
                       PATH=f"{self.dir / 'bin'}:{os.environ['PATH']}", **env)
        res = subprocess.run(["bash", str(self.repo / "scripts" / "gpu_session.sh"), "400"],
                             capture_output=True, text=True, env=run_env, timeout=300)
        self.assertEqual(res.returncode, 0, res.stdout[-3000:] + res.stderr[-3000:])
        log = (out / "session.log").read_text()
        with tarfile.open(out / "bundle.tgz") as t:
            bundled = {pathlib.PurePath(n).as_posix().lstrip("./") for n in t.getnames()}
        return log, bundled

    def assert_settings(self, want, programs=("kvbench-run", "host_ops_bench")):
        # Every suite run (the stand-in kvbench's `run` calls) and every host_ops call saw
        # exactly `want`'s values of those settings.
        for program in programs:
            calls = sorted((self.dir / "records").glob(f"{program}-*.env"))
            self.assertTrue(calls, f"{program} never ran")
            for path in calls:
                seen = dict(line.split("=", 1) for line in path.read_text().splitlines())
                for key, value in want.items():
                    self.assertEqual(seen.get(key), value, f"{key} in a call of {program}")

    def assert_stages(self, log, expected):
        # Each stage's end line, in order, with its exit code.
        ends = [line.split("] ", 1)[1] for line in log.splitlines() if ": rc=" in line]
        self.assertEqual([e.split(" in ")[0] for e in ends], expected, log)

    def test_every_stage_runs_in_order_and_hands_the_suites_what_the_benches_chose(self):
        log, bundled = self.session(GPU_UNIT_FIRST="1")
        self.assert_stages(log, [
            "gpu_tests: rc=0", "sass: rc=0", "decode_bench: rc=0", "sdpa_peer: rc=0",
            "summed_bench: rc=0", "model_peer: rc=0", "small_gemm_bench: rc=0",
            *(["memcheck: rc=0"] if "memcheck: rc=0" in log.split("unit_tests:")[0] else []),
            "unit_tests: rc=0", "e2e: rc=0", "kernels: rc=0", "suites: rc=0", "host_ops: rc=0",
            *([] if "memcheck: rc=0" in log.split("unit_tests:")[0] else ["memcheck: rc=0"]),
            "ncu: rc=0", "racecheck: rc=0"])
        self.assertIn("decode loops for the suites: fp16=v2b,kivi-4=v4", log)
        self.assertIn("retained-index kernel's tokens per step for the suites: 4", log)
        self.assertIn("model multiplies for the suites: kvbench", log)
        self.assertTrue(log.rstrip().endswith("done"), log)
        self.assert_settings({"KVBENCH_DECODE_LOOP": "fp16=v2b,kivi-4=v4",
                              "KVBENCH_RETAINED_TOKENS": "4", "KVBENCH_MODEL_GEMM": "kvbench"})
        # host_ops counts every default method (with the suites' settings, above).
        calls = (self.dir / "records" / "calls").read_text()
        for method in ("full", "h2o", "tova", "scissorhands", "quest"):
            self.assertIn(f"host_ops_bench 16 8128 4 8 {method} cuda 5", calls)
        for name in ("session.log", "gpu_tests.log", "decode_bench.jsonl", "e2e/report.json",
                     "kernels/report.json", "suites/report.json", "e2e-report.md", "host_ops.jsonl", "unit_tests.log",
                     "full_build.log"):
            self.assertIn(name, bundled)

    def test_a_failed_kernel_test_keeps_the_unchecked_kernels_out_of_the_suites(self):
        log, _ = self.session(FAKE_TESTS_RC="1", GPU_SKIP="sass ncu racecheck memcheck")
        self.assertIn("gpu_tests: rc=1", log)
        self.assertIn("v2b left out", log)
        self.assertIn("retained tokens: 4 left out", log)
        self.assertIn("model gemm: the small-batch kernel left out", log)
        self.assert_settings({"KVBENCH_DECODE_LOOP": "fp16=v2,kivi-4=v4",
                              "KVBENCH_RETAINED_TOKENS": "1", "KVBENCH_MODEL_GEMM": "aten"})

    def test_a_failed_cli_build_still_returns_what_ran(self):
        log, bundled = self.session(FAKE_CLI_FAIL="1", GPU_SKIP="ncu racecheck")
        self.assertIn("full build: no build-cuda/kvbench in time", log)
        self.assertIn("host_ops: no host_ops_bench", log)
        self.assertIn("decode_bench: rc=0", log)
        self.assertIn("unit_tests: rc=0", log)  # the tests build even when the CLI fails
        self.assertTrue(log.rstrip().endswith("done"), log)
        self.assertIn("full_build.log", bundled)
        self.assertNotIn("e2e/report.json", bundled)


if __name__ == "__main__":
    unittest.main()
