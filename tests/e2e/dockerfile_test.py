"""A bounded check of the Dockerfile's package steps (no container engine needed).

The image's build stage failed on a fresh machine because tools/setup.sh
installed the test-only Slurm and munge there, and munge's post-install
script fails under buildah's chroot isolation. A full `tools/image.sh` needs
~15 GB and 5+ minutes, so CI runs this instead:

  1. the Dockerfile parses into stages; the build stage runs
     `tools/setup.sh --profile build` (never the default test profile) and
     configures CMake with -DPREFLIGHT_FUZZ=OFF and -DPREFLIGHT_TESTS=OFF (the
     build profile has neither clang nor clang-format);
  2. `tools/setup.sh --profile build --dry-run` lists the stage's Debian
     packages: none is test-only, and their whole dependency closure
     (apt-cache depends --recurse, no recommends: the stage installs with
     --no-install-recommends) holds neither munge nor any slurm package;
  3. every Debian package any stage names exists in the package index, and
     every `apt-get install` in the Dockerfile uses --no-install-recommends;
  4. the test profile is a superset of the build profile and does hold
     Slurm and munge (the real-Slurm test needs them);
  5. with BUILD_DIR given: every shared library the binaries the build
     stage copies to /out/bin load
     (ldd, transitively) outside the torch wheel comes from a package in the
     runtime stage's dependency closure. The image once built and then could
     not start its server (libpq.so.5 missing: the PostgreSQL store had added
     a library the runtime list never got); this finds that in seconds.

What it does not prove: that the image builds, runs or is small; that a
package's post-install works in a chroot (only that munge's is not run);
the COPY paths. Those are tools/image.sh's (run before a release).

Usage: dockerfile_test.py [BUILD_DIR]
"""
import os
import re
import shlex
import subprocess
import sys

from e2e_common import ROOT, Results

R = Results()
expect = R.expect
TEST_ONLY = {"slurm-wlm", "munge", "prometheus", "clang", "clang-format"}


def stages(path):
    """[(name, [RUN command text, ...])] with line continuations joined."""
    with open(path) as f:
        text = re.sub(r"\\\n", " ", f.read())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            m = re.search(r"\bAS\s+(\S+)", rest, re.I)
            out.append((m.group(1) if m else f"stage{len(out)}", []))
        elif word.upper() == "RUN" and out:
            out[-1][1].append(rest)
    return out


def apt_installs(command):
    """The packages of every `apt-get install` in a RUN command, and whether
    each such install passes --no-install-recommends."""
    pkgs, all_no_recommends = [], True
    for part in re.split(r"&&|;", command):
        if "apt-get" not in part:
            continue
        words = shlex.split(part.replace(">/dev/null", " "))
        if "apt-get" in words and "install" in words:
            all_no_recommends &= "--no-install-recommends" in words
            after = words[words.index("install") + 1:]
            pkgs += [w for w in after if not w.startswith("-")]
    return pkgs, all_no_recommends


def setup_packages(profile):
    p = subprocess.run([f"{ROOT}/tools/setup.sh", "--profile", profile, "--dry-run"],
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout.split()


def closure(packages):
    p = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                        "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
                        *packages], capture_output=True, text=True, timeout=120)
    names = {line.strip().strip("<>") for line in p.stdout.splitlines()
             if line and not line.startswith(" ")}
    return p.returncode, names


def shared_libraries(binary):
    """{soname: resolved path or None} of everything `binary` loads (ldd is
    transitive), leaving out the torch wheel's own libraries (the image copies
    the wheel's lib and nvidia directories whole) and the vDSO."""
    p = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=60)
    libs = {}
    for line in p.stdout.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+(not found|\S+)", line)
        if m:
            path = None if m.group(2) == "not found" else m.group(2)
            if path is None or "-packages/" not in path:
                libs[m.group(1)] = path
        elif line.strip().startswith("/"):
            libs[line.split()[0]] = line.split()[0]  # The dynamic loader itself.
    return p.returncode, libs


def spellings(path):
    """usrmerge: dpkg may know a library under /usr or through a symbolic
    link, so each spelling of `path` is asked for."""
    out = [path, os.path.realpath(path)]
    return list(dict.fromkeys(out + ["/usr" + c for c in out if c.startswith(("/lib", "/bin"))]))


def owning_packages(paths):
    """{path: the Debian package that installed it} for those dpkg knows, in
    one dpkg -S call (it answers the paths it knows and exits 1 for the rest)."""
    asked = sorted({c for path in paths for c in spellings(path)})
    p = subprocess.run(["dpkg", "-S", *asked], capture_output=True, text=True, timeout=120)
    known = {}
    for line in p.stdout.splitlines():
        pkgs, sep, path = line.partition(": ")
        if sep:
            known[path.strip()] = pkgs.split(",")[0].split(":")[0].strip()
    return {path: next((known[c] for c in spellings(path) if c in known), None)
            for path in paths}


def shipped_binaries(build_runs):
    """What the build stage copies to /out/bin (the runtime stage's
    /opt/preflight/bin), as paths under the CMake build tree."""
    text = " ".join(build_runs)
    m = re.search(r"\bcp\s+((?:build/\S+\s+)+)/out/bin/?", text)
    return [w[len("build/"):] for w in m.group(1).split()] if m else []


def check_runtime_libraries(build, runtime_pkgs, shipped):
    expect(f"the build stage copies the binaries it ships ({len(shipped)})",
           "service/preflight-server" in shipped and "service/preflight-worker" in shipped,
           shipped)
    rc, deps = closure(runtime_pkgs)
    expect(f"the runtime stage's dependency closure resolves ({len(deps)} packages)",
           rc == 0 and len(deps) > len(runtime_pkgs), rc)
    for rel in shipped:
        binary = os.path.join(build, rel)
        if not os.path.exists(binary):
            expect(f"{rel} is built (the image ships it)", False, binary)
            continue
        rc, libs = shared_libraries(binary)
        unresolved = sorted(n for n, path in libs.items() if path is None)
        expect(f"{rel}: ldd resolves every library here", rc == 0 and not unresolved,
               (rc, unresolved))
        owners = owning_packages([path for path in libs.values() if path])
        missing = {}
        for name, path in sorted(libs.items()):
            pkg = owners.get(path) if path else None
            if pkg is None or pkg not in deps:
                missing[name] = pkg
        expect(f"{rel}: its {len(libs)} system libraries all come from the runtime stage's "
               "packages", not missing,
               {n: (f"from {p}, not in the runtime stage's closure" if p else "no package owns it")
                for n, p in missing.items()})


def main():
    st = stages(os.environ.get('DOCKERFILE', f'{ROOT}/Dockerfile'))
    names = [n for n, _ in st]
    expect("the Dockerfile has a build stage and a runtime stage", "build" in names
           and len(st) == 2, names)
    build_runs = dict(st).get("build", [])
    setup_runs = [r for r in build_runs if "tools/setup.sh" in r]
    expect("the build stage runs tools/setup.sh --profile build",
           len(setup_runs) == 1 and re.search(r"tools/setup\.sh\s+--profile[ =]build\b",
                                              setup_runs[0]), setup_runs)
    expect("the build stage configures without the fuzz test (no clang there)",
           any("-DPREFLIGHT_FUZZ=OFF" in r for r in build_runs), build_runs)
    # The tests' CMake needs clang-format, which only the test profile has:
    # configuring them there failed the image build (found by tools/image.sh).
    expect("the build stage configures without the tests (no clang-format there)",
           any("-DPREFLIGHT_TESTS=OFF" in r for r in build_runs), build_runs)

    rc, build_pkgs = setup_packages("build")
    expect("setup --profile build --dry-run lists packages", rc == 0 and build_pkgs, rc)
    expect("the build profile has no test-only package",
           not TEST_ONLY & set(build_pkgs), sorted(TEST_ONLY & set(build_pkgs)))
    rc, deps = closure(build_pkgs)
    bad = sorted(d for d in deps if d == "munge" or d.startswith("slurm") or d == "libmunge2")
    expect(f"the build profile's dependency closure ({len(deps)} packages) holds no munge or "
           "slurm package", rc == 0 and len(deps) > len(build_pkgs) and not bad, (rc, bad))

    rc, test_pkgs = setup_packages("test")
    expect("the test profile is the build profile plus Slurm, munge and the test tools",
           rc == 0 and set(build_pkgs) <= set(test_pkgs)
           and {"slurm-wlm", "munge"} <= set(test_pkgs), test_pkgs)

    named = []
    for stage, runs in st:
        for r in runs:
            pkgs, no_rec = apt_installs(r)
            named += pkgs
            if pkgs:
                expect(f"{stage}: apt-get install uses --no-install-recommends", no_rec, r[:200])
    named = sorted(set(named + build_pkgs))
    p = subprocess.run(["apt-cache", "show", "--no-all-versions", *named], capture_output=True,
                       text=True, timeout=120)
    found = set(re.findall(r"^Package: (\S+)$", p.stdout, re.M))
    expect(f"every Debian package the image names exists in the index ({len(named)})",
           set(named) <= found, sorted(set(named) - found))
    runtime_runs = st[-1][1] if len(st) == 2 else []
    runtime_pkgs = [p for r in runtime_runs for p in apt_installs(r)[0]]
    if len(sys.argv) > 1:
        check_runtime_libraries(sys.argv[1], runtime_pkgs, shipped_binaries(build_runs))
    return R.finish()


if __name__ == "__main__":
    if not os.path.exists("/usr/bin/apt-cache"):
        print("skipped: no apt-cache (not a Debian machine)\n0 passed, 0 failed")
        sys.exit(0)
    sys.exit(main())
