#!/usr/bin/env bash
# Compiles every C++ file of the build (syntax only) against newer libtorch headers than the
# Debian 12 libtorch it builds with, so that an API change is found here and not on a lent GPU
# machine (which builds against PyTorch 2.11's wheel: scripts/gpu_full_build.sh). The headers
# come from Debian's own libtorch-dev packages of later releases (trixie: 2.6, sid: 2.14 as of
# this writing), downloaded and unpacked under build-torch-headers/ (nothing is installed).
# C++20 for 2.14 and later (their ATen.h refuses C++17), C++17 before; the torch+CUDA glue
# (KVBENCH_TORCH_CUDA) is compiled too, with a stub for the one header a CPU package lacks.
#   usage: scripts/check_torch_headers.sh [debian-suite ...]   (default: trixie sid)
#   CHECK_FILES="src/a.cpp src/b.cpp" checks only those sources (e.g. a change's files).
#   needs: build/compile_commands.json (scripts/setup.sh or any configured build), network to
#   deb.debian.org. About 10 minutes per suite on 2 cores. Exit 1 when a file fails.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f build/compile_commands.json ] || { echo "no build/compile_commands.json: configure build/ first"; exit 1; }
root=$PWD/build-torch-headers
apt_dir=$root/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/etc"
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(trixie sid)
: >"$apt_dir/etc/sources.list"
for s in "${suites[@]}"; do echo "deb http://deb.debian.org/debian $s main" >>"$apt_dir/etc/sources.list"; done
apt_opts=(-o "Dir::Etc::sourcelist=$apt_dir/etc/sources.list" -o Dir::Etc::sourceparts=/nonexistent
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o Debug::NoLocking=1
  -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update -qq
failed=0
for s in "${suites[@]}"; do
  version=$(apt-cache "${apt_opts[@]}" madison libtorch-dev | awk -F' *[|] *' -v s=" $s/" \
    'index($3, s) { print $2; exit }')
  [ -n "$version" ] || { echo "$s: no libtorch-dev"; failed=1; continue; }
  dest=$root/$s-${version//[:~]/_}  # a new version in the suite unpacks afresh
  if [ ! -d "$dest/usr/include/ATen" ]; then
    rm -rf "$dest" && mkdir -p "$dest"
    (cd "$apt_dir" && apt-get "${apt_opts[@]}" -qq download "libtorch-dev=$version")
    dpkg-deb -x "$apt_dir"/libtorch-dev_"${version//:/%3a}"_*.deb "$dest"
    rm -f "$apt_dir"/libtorch-dev_*.deb
  fi
  # A CPU package has no CUDA build macros; the glue needs only that the header exists.
  mkdir -p "$dest/stub/c10/cuda/impl"
  echo "#pragma once" >"$dest/stub/c10/cuda/impl/cuda_cmake_macros.h"
  major_minor=$(echo "$version" | sed -E 's/^([0-9]+)\.([0-9]+).*/\1 \2/')
  read -r major minor <<<"$major_minor"
  std=c++17
  if [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 14 ]; }; then std=c++20; fi
  echo "== $s: libtorch $version, -std=$std"
  python3 - "$dest" "$std" "$dest.log" <<'EOF' || failed=1
import concurrent.futures as cf, json, os, shlex, subprocess, sys
torch, std, log = sys.argv[1:4]
jobs = []
only = {os.path.realpath(f) for f in os.environ.get("CHECK_FILES", "").split()}
for entry in json.load(open("build/compile_commands.json")):
    if entry["file"].endswith(".cu"):
        continue
    if only and os.path.realpath(os.path.join(entry["directory"], entry["file"])) not in only:
        continue
    args, cmd, i = shlex.split(entry["command"]), [], 0
    while i < len(args):
        a = args[i]
        if a == "-isystem" and args[i + 1].startswith("/usr/include/torch"):
            cmd += ["-isystem", torch + args[i + 1]]  # the newer headers in place of Debian 12's
            i += 2
            continue
        if a == "-o":
            i += 2
            continue
        if a != "-c" and not a.startswith("-O"):
            cmd.append("-std=" + std if a.startswith("-std=") else a)
        i += 1
    cmd[1:1] = ["-isystem", torch + "/usr/include", "-isystem", torch + "/stub"]
    jobs.append((entry["file"], entry["directory"], cmd + ["-fsyntax-only", "-DKVBENCH_TORCH_CUDA=1"]))
def run(job):
    name, cwd, cmd = job
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return name, p.returncode, p.stderr
bad = 0
with open(log, "w") as out, cf.ThreadPoolExecutor(os.cpu_count() or 2) as ex:
    for name, rc, err in ex.map(run, jobs):
        if rc != 0:
            bad += 1
            out.write(f"== {name}\n{err}\n")
            first = next((l for l in err.splitlines() if "error" in l), err[:200])
            print(f"FAIL {os.path.relpath(name)}: {first}", flush=True)
print(f"{len(jobs) - bad} of {len(jobs)} files compile ({log})")
sys.exit(1 if bad else 0)
EOF
done
exit $failed
