"""k8s/: the Kubeflow MPIJob manifests (kustomize base + cpu/gpu overlays), checked without a cluster.

The overlays are rendered here by a small kustomize subset (resources, configMapGenerator, labels,
images, RFC 6902 patches) that refuses anything else, and compared with ``kubectl kustomize`` when
that is installed. Every rendered MPIJob is checked against the v2beta1 schema written down below
from the MPI Operator's CRD and its admission rules; pod templates (wrapped as Pods) and ConfigMaps
are validated with ``kubernetes-validate`` against the Kubernetes 1.29 API in strict mode. Then
what the job needs to actually run: non-root everywhere, -n = workers x slots, GPUs = slots, the
launcher runs ``dtrain train`` with a config file that is mounted and that dtrain accepts.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = {"cpu": K8S / "overlays" / "cpu", "gpu": K8S / "overlays" / "gpu"}
TARGETS = {"base": K8S / "base", **OVERLAYS}  # the base is a complete (small CPU) job of its own
KUBERNETES_VERSION = "1.29"  # the oldest Kubernetes the manifests are written for (k8s/README.md)
IMAGE_UID = 1000  # USER of docker/Dockerfile and docker/Dockerfile.cuda

# ---------------------------------------------------------------- the MPIJob v2beta1 schema
#
# Written down from kubeflow/mpi-operator: the CRD (manifests/base/kubeflow.org_mpijobs.yaml, generated
# from pkg/apis/kubeflow/v2beta1/types.go) for field names, types and enums, and the operator's own
# admission checks (pkg/apis/kubeflow/validation/validation.go) for what the CRD leaves open:
# Launcher required with replicas == 1, Worker replicas >= 1, restartPolicy Never|OnFailure, at least
# one container per template, cleanPodPolicy and sshAuthMountPath and slotsPerWorker set, and
# "<name>-worker-<replicas-1>" a DNS-1123 label (checked in test_mpijob_name_gives_valid_pod_hostnames).
# Unknown fields are errors here: the API server would prune them silently.
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_REPLICA_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["replicas", "restartPolicy", "template"],
    "properties": {
        "replicas": _INT32,
        "restartPolicy": {"enum": ["Never", "OnFailure"]},  # CRD: string; validation.go: these two
        "template": {
            "type": "object",
            "additionalProperties": False,
            "required": ["spec"],
            "properties": {
                "metadata": {"type": "object"},
                "spec": {
                    "type": "object",
                    "required": ["containers"],
                    "properties": {"containers": {"type": "array", "minItems": 1}},
                },
            },
        },
    },
}
MPIJOB_V2BETA1_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kubeflow.org/v2beta1"},
        "kind": {"const": "MPIJob"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "labels": {"type": "object"},
                           "annotations": {"type": "object"}, "namespace": {"type": "string"}},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["mpiReplicaSpecs", "slotsPerWorker", "runPolicy", "sshAuthMountPath", "mpiImplementation"],
            "properties": {
                "slotsPerWorker": {**_INT32, "minimum": 1},
                "runPolicy": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["cleanPodPolicy"],
                    "properties": {
                        "cleanPodPolicy": {"enum": ["None", "Running", "All"]},
                        "ttlSecondsAfterFinished": _INT32,
                        "activeDeadlineSeconds": {"type": "integer", "minimum": 0},  # int64
                        "backoffLimit": _INT32,
                        "schedulingPolicy": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"minAvailable": _INT32, "queue": {"type": "string"},
                                           "minResources": {"type": "object"}, "priorityClass": {"type": "string"},
                                           "scheduleTimeoutSeconds": _INT32},
                        },
                        "suspend": {"type": "boolean"},
                        # operator v0.6+: kubeflow.org/mpi-operator or kueue.x-k8s.io/multikueue
                        "managedBy": {"enum": ["kubeflow.org/mpi-operator", "kueue.x-k8s.io/multikueue"]},
                    },
                },
                "mpiReplicaSpecs": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["Launcher"],
                    "properties": {
                        "Launcher": {**_REPLICA_SPEC, "properties": {**_REPLICA_SPEC["properties"],
                                                                     "replicas": {"const": 1}}},
                        "Worker": {**_REPLICA_SPEC, "properties": {**_REPLICA_SPEC["properties"],
                                                                   "replicas": {**_INT32, "minimum": 1}}},
                    },
                },
                "sshAuthMountPath": {"type": "string", "minLength": 1},
                "mpiImplementation": {"enum": ["OpenMPI", "Intel", "MPICH"]},
                # operator v0.6+ (absent from the manifests so that v0.5 accepts them)
                "launcherCreationPolicy": {"enum": ["AtStartup", "WaitForWorkersReady"]},
                "runLauncherAsWorker": {"type": "boolean"},
            },
        },
    },
}


# ---------------------------------------------------------------- a small, strict kustomize


def _load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), f"JSON pointer {path!r} must start with /"
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(doc: dict, ops: list[dict], where: str) -> dict:
    """RFC 6902 add / remove / replace / test; anything else is refused."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _pointer(op["path"])
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        kind = op["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if kind == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif kind == "remove":
                del node[index]
            elif kind == "replace":
                node[index] = copy.deepcopy(op["value"])
            elif kind == "test":
                assert node[index] == op["value"], f"{where}: test {op['path']} == {op['value']!r} failed"
            else:
                raise AssertionError(f"{where}: JSON patch op {kind!r} not supported by this renderer")
        else:
            if kind in ("replace", "remove", "test"):
                assert last in node, f"{where}: {op['op']} {op['path']}: no such field"
            if kind in ("add", "replace"):
                node[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[last]
            elif kind == "test":
                assert node[last] == op["value"], f"{where}: test {op['path']} == {op['value']!r} failed"
            else:
                raise AssertionError(f"{where}: JSON patch op {kind!r} not supported by this renderer")
    return doc


def _split_image(ref: str) -> tuple[str, str | None, str | None]:
    name, _, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:], digest or None
    return name, None, digest or None


def _set_images(node, images: list[dict]) -> None:
    """kustomize's images transformer: every containers/initContainers image, however deep."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for c in value:
                    name, tag, digest = _split_image(c["image"])
                    for rule in images:
                        if rule["name"] == name:
                            name = rule.get("newName", name)
                            tag = rule.get("newTag", tag)
                            digest = rule.get("digest", digest)
                    c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
            _set_images(value, images)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, images)


def _matches(target: dict, obj: dict) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    have = {"group": group, "version": version, "kind": obj["kind"], "name": obj["metadata"]["name"]}
    return all(have[k] == v for k, v in target.items())


KNOWN_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "configMapGenerator", "labels", "images", "patches"}


def render(directory: Path) -> list[dict]:
    """The objects ``kustomize build directory`` makes, for the features these manifests use."""
    kfile = directory / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    unknown = set(k) - KNOWN_KUSTOMIZATION_KEYS
    assert not unknown, f"{kfile}: {sorted(unknown)} not understood by tests/test_k8s.py's renderer: extend it"
    objects: list[dict] = []
    for res in k.get("resources", []):
        path = (directory / res).resolve()
        objects += render(path) if path.is_dir() else _load_all(path)
    for gen in k.get("configMapGenerator", []):
        assert gen.get("options", {}).get("disableNameSuffixHash"), \
            f"{kfile}: {gen['name']}: a hashed name would not be rewritten inside the MPIJob (a custom resource)"
        assert set(gen) <= {"name", "files", "options"}, f"{kfile}: generator fields {sorted(gen)}"
        data = {}
        for f in gen["files"]:
            key, _, src = f.partition("=") if "=" in f else (Path(f).name, "", f)
            data[key] = (directory / src).read_text()
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    for entry in k.get("labels", []):
        assert not entry.get("includeSelectors") and not entry.get("includeTemplates"), \
            f"{kfile}: labels on selectors/templates not supported by this renderer"
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(entry["pairs"])
    if k.get("images"):
        for obj in objects:
            _set_images(obj, k["images"])
    for patch in k.get("patches", []):
        assert set(patch) == {"path", "target"}, f"{kfile}: patches need a path and a target"
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        assert isinstance(ops, list), f"{patch['path']}: use RFC 6902 JSON patches (a YAML list of ops)"
        hits = [i for i, o in enumerate(objects) if _matches(patch["target"], o)]
        assert hits, f"{kfile}: patch {patch['path']} matches no object"
        for i in hits:
            objects[i] = _json_patch(objects[i], ops, f"{directory.name}/{patch['path']}")
    return objects


def rendered(target: str) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in render(TARGETS[target])}


def mpijob(target: str) -> dict:
    jobs = [o for o in render(TARGETS[target]) if o["kind"] == "MPIJob"]
    assert len(jobs) == 1
    return jobs[0]


def pod_templates(job: dict) -> dict[str, dict]:
    return {role: spec["template"] for role, spec in job["spec"]["mpiReplicaSpecs"].items()}


def launcher_argv(job: dict) -> list[str]:
    c = pod_templates(job)["Launcher"]["spec"]["containers"][0]
    return [str(a) for a in c.get("command", []) + c.get("args", [])]


# ---------------------------------------------------------------- parsing and rendering


def test_every_yaml_file_parses_and_has_a_known_shape():
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        docs = _load_all(path)
        assert docs, f"{path}: empty"
        for doc in docs:
            if path.name == "kustomization.yaml":
                assert doc["kind"] == "Kustomization", path
            elif isinstance(doc, list):
                assert all({"op", "path"} <= set(op) for op in doc), f"{path}: not a JSON patch"
            else:
                assert {"apiVersion", "kind", "metadata"} <= set(doc), path


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_renders_one_mpijob_and_its_configmap(target):
    objs = rendered(target)
    assert set(objs) == {("MPIJob", "dtrain"), ("ConfigMap", "dtrain-run")}
    for obj in objs.values():
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "dtrain"


def _kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@pytest.mark.parametrize("target", sorted(OVERLAYS))
def test_renderer_agrees_with_kustomize(target):
    cmd = _kustomize_command()
    if cmd is None:
        pytest.skip("neither kubectl nor kustomize installed: the built-in renderer is checked on its own")
    proc = subprocess.run([*cmd, str(OVERLAYS[target])], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(proc.stdout) if o}
    assert theirs == rendered(target)


def test_json_patch_test_op_guards_container_order():
    job = mpijob("cpu")
    with pytest.raises(AssertionError, match="test"):
        _json_patch(job, [{"op": "test", "path": "/spec/mpiReplicaSpecs/Worker/template/spec/containers/0/name",
                           "value": "launcher"}], "here")


# ---------------------------------------------------------------- schemas


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_mpijob_matches_the_operator_v2beta1_schema(target):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(MPIJOB_V2BETA1_SCHEMA)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(mpijob(target))]
    assert not errors, "\n".join(errors)


def test_schema_rejects_what_the_operator_rejects():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(MPIJOB_V2BETA1_SCHEMA)
    good = mpijob("cpu")
    assert validator.is_valid(good)
    bad_values = {
        "/spec/runPolicy/cleanPodPolicy": "Always",
        "/spec/mpiImplementation": "MVAPICH",
        "/spec/mpiReplicaSpecs/Launcher/replicas": 2,
        "/spec/mpiReplicaSpecs/Worker/replicas": 0,
        "/spec/mpiReplicaSpecs/Worker/restartPolicy": "Always",
        "/spec/slotsPerWorker": "8",
        "/spec/slotsPerWorkers": 8,  # a typo the API server would silently drop
    }
    for path, value in bad_values.items():
        bad = _json_patch(good, [{"op": "add", "path": path, "value": value}], "bad")
        assert not validator.is_valid(bad), f"{path}={value!r} accepted"
    no_launcher = _json_patch(good, [{"op": "remove", "path": "/spec/mpiReplicaSpecs/Launcher"}], "bad")
    assert not validator.is_valid(no_launcher)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_mpijob_name_gives_valid_pod_hostnames(target):
    job = mpijob(target)
    workers = job["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"]
    for host in (f"{job['metadata']['name']}-worker-{workers - 1}", f"{job['metadata']['name']}-launcher"):
        assert len(host) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", host), host


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_pod_templates_and_configmaps_are_valid_kubernetes_objects(target):
    kv = pytest.importorskip("kubernetes_validate")
    objs = rendered(target)
    checked = []
    for role, template in pod_templates(objs["MPIJob", "dtrain"]).items():
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {**template.get("metadata", {}), "name": f"dtrain-{role.lower()}"},
               "spec": template["spec"]}
        checked.append(pod)
    checked += [o for o in objs.values() if o["kind"] != "MPIJob"]
    for obj in checked:
        for version in (KUBERNETES_VERSION, kv.latest_version()):
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as exc:
                where = "/".join(map(str, exc.absolute_path))
                pytest.fail(f"{target}: {obj['kind']} {obj['metadata']['name']} (Kubernetes {version}): "
                            f"{where}: {exc.message}")


# ---------------------------------------------------------------- what makes the job run


def _containers(template: dict) -> list[dict]:
    return template["spec"]["containers"] + template["spec"].get("initContainers", [])


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_everything_runs_as_the_image_user_without_privileges(target):
    for role, template in pod_templates(mpijob(target)).items():
        spec = template["spec"]
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, role
        assert pod_sc.get("runAsUser") == IMAGE_UID and pod_sc.get("runAsGroup") == IMAGE_UID, role
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", role
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(field), f"{role}: {field}"
        assert not any("hostPath" in v for v in spec.get("volumes", [])), f"{role}: hostPath volume"
        for c in _containers(template):
            sc = c.get("securityContext", {})
            where = f"{target} {role}/{c['name']}"
            assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", IMAGE_UID) == IMAGE_UID, where
            assert sc.get("privileged") is False, f"{where}: privileged must be false"
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation must be false"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: drop ALL capabilities"
            assert not sc.get("capabilities", {}).get("add"), f"{where}: adds capabilities"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_launcher_runs_dtrain_train_on_workers_times_slots_ranks(target):
    job = mpijob(target)
    argv = launcher_argv(job)
    assert "mpirun" in argv or "mpiexec" in argv, argv
    mpi = argv.index("mpirun" if "mpirun" in argv else "mpiexec")
    start = argv.index("dtrain")
    assert argv[start + 1] == "train", argv
    np_flag = next(i for i in range(mpi, start) if argv[i] in ("-n", "-np", "--np"))
    ranks = int(argv[np_flag + 1])
    workers = job["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"]
    assert ranks == workers * job["spec"]["slotsPerWorker"], f"-n {ranks} != Worker replicas x slotsPerWorker"
    images = {c["image"] for t in pod_templates(job).values() for c in t["spec"]["containers"]}
    assert len(images) == 1, f"launcher and workers must run the same image (same MPI build): {images}"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_config_file_is_mounted_on_the_workers_and_dtrain_accepts_it(target, tmp_path):
    objs = rendered(target)
    job = objs["MPIJob", "dtrain"]
    argv = launcher_argv(job)
    config = Path(argv[argv.index("--config") + 1])
    worker = pod_templates(job)["Worker"]["spec"]
    mount = next(m for c in worker["containers"] for m in c.get("volumeMounts", [])
                 if config.parent == Path(m["mountPath"]))
    volume = next(v for v in worker["volumes"] if v["name"] == mount["name"])
    cm = objs["ConfigMap", volume["configMap"]["name"]]
    assert config.name in cm["data"], f"{config} is not a key of ConfigMap {cm['metadata']['name']}"
    local = tmp_path / config.name
    local.write_text(cm["data"][config.name])
    from dtrain.train.config import resolve_config

    resolved = resolve_config({}, str(local))
    assert resolved["model"] and resolved["epochs"] >= 1


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_ssh_wiring_matches_the_images(target):
    """The MPI Operator's SSH keys land where the images' sshd_config expects them, and workers run
    that sshd (as the image user, on its port); see docker/sshd_config."""
    sshd_config = (ROOT / "docker" / "sshd_config").read_text()
    port = int(re.search(r"^Port (\d+)$", sshd_config, re.M).group(1))
    host_key = re.search(r"^HostKey (\S+)$", sshd_config, re.M).group(1)
    job = mpijob(target)
    assert job["spec"]["sshAuthMountPath"] == str(Path(host_key).parent)
    worker = pod_templates(job)["Worker"]["spec"]["containers"][0]
    argv = worker["command"] + worker["args"]
    assert argv[0] == "/usr/sbin/sshd" and "-D" in argv[1], argv
    assert argv[argv.index("-f") + 1] == "/etc/ssh/dtrain_sshd_config", "the config docker/Dockerfile* installs"
    assert worker["readinessProbe"]["tcpSocket"]["port"] == port
    assert pod_templates(job)["Launcher"]["spec"]["containers"][0]["command"] == ["wait-for-workers"]


def test_cpu_overlay_uses_mpich_and_no_gpus():
    job = mpijob("cpu")
    assert job["spec"]["mpiImplementation"] == "MPICH", "docker/Dockerfile ships MPICH"
    assert "nvidia.com/gpu" not in yaml.safe_dump(job)
    assert "--device" not in launcher_argv(job)
    assert pod_templates(job)["Worker"]["spec"]["containers"][0]["image"].endswith(":cpu")


def test_gpu_overlay_gives_each_rank_one_gpu_over_cuda_aware_open_mpi():
    job = mpijob("gpu")
    assert job["spec"]["mpiImplementation"] == "OpenMPI", "docker/Dockerfile.cuda ships Open MPI"
    templates = pod_templates(job)
    worker = templates["Worker"]["spec"]["containers"][0]
    assert worker["image"].endswith(":cuda")
    limits, requests = worker["resources"]["limits"], worker["resources"].get("requests", {})
    gpus = int(limits["nvidia.com/gpu"])
    assert gpus >= 1 and int(requests.get("nvidia.com/gpu", gpus)) == gpus, "extended resources: requests == limits"
    assert job["spec"]["slotsPerWorker"] == gpus, "one rank per GPU: slotsPerWorker == nvidia.com/gpu"
    launcher = templates["Launcher"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in yaml.safe_dump(launcher), "the launcher only runs mpirun"
    argv = launcher_argv(job)
    assert argv[argv.index("--device") + 1] == "cuda"
    assert argv[argv.index("--hostfile") + 1] == "/etc/mpi/hostfile"
    assert any(t["key"] == "nvidia.com/gpu" for t in templates["Worker"]["spec"].get("tolerations", []))

