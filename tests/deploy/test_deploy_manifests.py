"""Deployment material is consistent with itself and with the code: the KubeRay manifests, the ``ray up`` config,
the Dockerfile and docs/operations.md.

Static checks only (PyYAML, the config loader, the CLI parser): no Ray, no network, no Kubernetes.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import posixpath
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from layeredge_dist.config import config_from_dict, load_config

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "deploy" / "kuberay"
RAYCLUSTER = KUBERAY / "raycluster.yaml"
PODMONITOR = KUBERAY / "podmonitor.yaml"
JOB = KUBERAY / "job.yaml"
ONPREM = REPO / "cluster" / "onprem.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
OPERATIONS = REPO / "docs" / "operations.md"
ALERT_RULES = REPO / "deploy" / "prometheus" / "alert_rules.yml"

ALERTS = (
    "LayerEdgeEdgeErrorOverBudget",
    "LayerEdgeLinkBandwidthCollapse",
    "LayerEdgeStageDown",
    "LayerEdgeRejectedFrames",
    "LayerEdgeStepTimeRegression",
    "LayerEdgeRestartLoop",
)
RAY_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080}
TORCH_PIN = "torch==2.13.0"
SECRET_KEY_FIELDS = ("name", "key")


# ------------------------------------------------------------------------------------------------ helpers


def docs_of(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)} among {[d.get('kind') for d in docs]}"
    return found[0]


@pytest.fixture(scope="module")
def cluster_docs() -> list[dict[str, Any]]:
    return docs_of(RAYCLUSTER)


@pytest.fixture(scope="module")
def raycluster(cluster_docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(cluster_docs, "RayCluster")


@pytest.fixture(scope="module")
def job_docs() -> list[dict[str, Any]]:
    return docs_of(JOB)


@pytest.fixture(scope="module")
def run_config_text(job_docs: list[dict[str, Any]]) -> str:
    data = one(job_docs, "ConfigMap")["data"]
    assert set(data) == {"run.yaml"}, f"ConfigMap keys: {sorted(data)}"
    return data["run.yaml"]


@pytest.fixture(scope="module")
def run_config(run_config_text: str):  # -> RunConfig
    return config_from_dict(yaml.safe_load(run_config_text))


def groups(rc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, group spec) of the head group and every worker group."""
    spec = rc["spec"]
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]


def pod(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    """KubeRay runs `ray start` in the first container of a group's pod."""
    return pod(group)["containers"][0]


def ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def pod_ports(group: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in pod(group)["containers"]:
        out.update(ports(c))
    return out


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def mounts(group: dict[str, Any], container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> the volume it mounts."""
    volumes = {v["name"]: v for v in pod(group).get("volumes", [])}
    out = {}
    for m in container.get("volumeMounts", []):
        assert m["name"] in volumes, f"volumeMount {m['name']!r} has no volume in the pod"
        out[m["mountPath"]] = volumes[m["name"]]
    return out


_QUANTITY = re.compile(r"^([0-9.]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_SCALE = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: object) -> float:
    m = _QUANTITY.match(str(value))
    assert m, f"not a Kubernetes quantity: {value!r}"
    return float(m.group(1)) * _SCALE[m.group(2)]


def start_flag(command: str, flag: str) -> str | None:
    """Value of ``--flag=value`` / ``--flag value`` in a shell command, else None."""
    m = re.search(rf"(?:^|\s){re.escape(flag)}(?:=|\s+)(\S+)", command)
    return m.group(1) if m else None


def first_command(script: str) -> list[str]:
    """The words of the first command of a shell script (up to ; && || | or a redirection)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for tok in lexer:
        if tok and set(tok) <= set(";&|<>()"):
            break
        words.append(tok)
    return words


def entrypoint_command(entrypoint: str) -> list[str]:
    """The first command a RayJob entrypoint runs, looking inside a ``bash -c '...'`` wrapper.

    KubeRay's submitter pastes the entrypoint unquoted into its shell script (``ray job submit ... -- <entrypoint>
    ; fi ; ...``), so a compound entrypoint must be a single ``bash -c '...'`` word there, else its ``;`` would end
    the submitter's own command.
    """
    words = first_command(entrypoint)
    if words[:2] in (["bash", "-c"], ["sh", "-c"]):
        assert len(words) == 3, f"bash -c takes the whole script as one quoted word: {words}"
        return first_command(words[2])
    assert len(words) == len(shlex.split(entrypoint)), \
        f"a compound entrypoint must be wrapped in bash -c '...' (KubeRay's submitter shell splits it): {entrypoint!r}"
    return words


_PIP_VALUE_OPTIONS = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-r", "--requirement",
                      "-c", "--constraint", "-t", "--target"}


def pip_requirements(command: str) -> list[str]:
    """Requirement arguments of every ``pip install`` in a shell command (options and their values left out)."""
    out = []
    for segment in re.split(r"&&|\|\||;", command):
        try:
            words = shlex.split(segment)
        except ValueError:
            continue
        for i, w in enumerate(words[:-1]):
            if w.endswith("pip") and words[i + 1] == "install":
                skip = False
                for arg in words[i + 2:]:
                    if skip:
                        skip = False
                    elif arg.startswith("-"):
                        skip = arg in _PIP_VALUE_OPTIONS
                    else:
                        out.append(arg)
    return out


def torch_requirements(commands: list[str]) -> list[str]:
    return [r for c in commands for r in pip_requirements(c) if re.match(r"torch(\b|[=<>~!\[])", r)]


# ------------------------------------------------------------------------------------------------ RayCluster


def test_raycluster_parses_with_api_version_kind_and_groups(raycluster: dict[str, Any]) -> None:
    assert raycluster["apiVersion"] == "ray.io/v1"
    assert raycluster["metadata"]["name"]
    spec = raycluster["spec"]
    assert "headGroupSpec" in spec and spec["headGroupSpec"]["template"]["spec"]["containers"]
    workers = spec["workerGroupSpecs"]
    assert workers, "no worker group"
    names = [g["groupName"] for g in workers]
    assert len(set(names)) == len(names), f"duplicate worker group names: {names}"
    assert "stages" in names


def test_ray_start_params_include_metrics_export_port(raycluster: dict[str, Any]) -> None:
    for name, group in groups(raycluster):
        params = group["rayStartParams"]
        for key, value in params.items():
            assert isinstance(value, str), f"{name}: rayStartParams.{key} must be a string for KubeRay, got {value!r}"
        assert params.get("metrics-export-port") == str(RAY_PORTS["metrics"]), f"{name}: {params}"
        assert "num-cpus" in params, f"{name}: num-cpus missing"
    head = raycluster["spec"]["headGroupSpec"]["rayStartParams"]
    assert head.get("dashboard-host") == "0.0.0.0"


def test_ray_containers_declare_the_ray_ports(raycluster: dict[str, Any]) -> None:
    head = ports(ray_container(raycluster["spec"]["headGroupSpec"]))
    for name, number in RAY_PORTS.items():
        assert head.get(name) == number, f"head container port {name} should be {number}: {head}"
    for name, group in groups(raycluster):
        declared = ports(ray_container(group))
        metrics = int(group["rayStartParams"]["metrics-export-port"])
        assert declared.get("metrics") == metrics, f"{name}: port 'metrics' != metrics-export-port ({declared})"
        all_ports = [p for c in pod(group)["containers"] for p in c.get("ports", [])]
        names = [p["name"] for p in all_ports]
        assert len(set(names)) == len(names), f"{name}: duplicate port names {names}"
        numbers = [p["containerPort"] for p in all_ports]
        assert len(set(numbers)) == len(numbers), f"{name}: duplicate port numbers {numbers}"
        for port_name in names:  # IANA_SVC_NAME: what Kubernetes accepts as a port name
            assert re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?", port_name) and re.search("[a-z]", port_name), \
                f"{name}: invalid Kubernetes port name {port_name!r}"


def test_every_container_has_cpu_and_memory_requests_and_limits(raycluster: dict[str, Any]) -> None:
    for name, group in groups(raycluster):
        for c in pod(group)["containers"]:
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in res.get(kind, {}), f"{name}/{c['name']}: resources.{kind}.{resource} missing"
            for resource, limit in res["limits"].items():
                request = res["requests"].get(resource)
                assert request is not None, f"{name}/{c['name']}: limit of {resource} without request"
                assert quantity(request) <= quantity(limit), f"{name}/{c['name']}: {resource} request > limit"


def test_ray_cpus_match_the_container_cpu_limit(raycluster: dict[str, Any]) -> None:
    for name, group in groups(raycluster):
        if name == "head":
            continue
        limit = quantity(ray_container(group)["resources"]["limits"]["cpu"])
        assert float(group["rayStartParams"]["num-cpus"]) == limit, \
            f"{name}: num-cpus should equal the CPU limit ({limit}) so torch threads are not throttled"


def test_gpu_group_requests_gpus(raycluster: dict[str, Any]) -> None:
    gpu_groups = [(n, g) for n, g in groups(raycluster) if "num-gpus" in g["rayStartParams"]]
    assert gpu_groups, "no GPU worker group"
    for name, group in gpu_groups:
        res = ray_container(group)["resources"]
        gpus = float(group["rayStartParams"]["num-gpus"])
        assert quantity(res["limits"]["nvidia.com/gpu"]) == gpus, name
        assert quantity(res["requests"]["nvidia.com/gpu"]) == gpus, name


def test_ray_auth_comes_from_one_secret(raycluster: dict[str, Any], job_docs: list[dict[str, Any]]) -> None:
    refs = set()
    containers = [(name, ray_container(g)) for name, g in groups(raycluster)]
    submitter = one(job_docs, "RayJob")["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    for name, c in containers + [("rayjob submitter", submitter)]:
        e = env(c)
        assert e.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{name}: RAY_AUTH_MODE=token missing"
        token = e.get("RAY_AUTH_TOKEN")
        assert token is not None and "value" not in token, f"{name}: RAY_AUTH_TOKEN must come from a Secret"
        ref = token["valueFrom"]["secretKeyRef"]
        refs.add(tuple(ref[k] for k in SECRET_KEY_FIELDS))
        assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in e, f"{name}: that flag is for loopback clusters only"
    assert len(refs) == 1, f"containers read the Ray token from different secrets: {refs}"
    assert refs.pop()[1] == "auth_token"  # the key KubeRay's authOptions use


def test_images_are_the_layeredge_image(raycluster: dict[str, Any]) -> None:
    for name, group in groups(raycluster):
        for c in pod(group)["containers"]:
            assert c["image"].startswith("layeredge:"), f"{name}/{c['name']}: image {c['image']}"
    by_name = dict(groups(raycluster))
    assert ray_container(by_name["head"])["image"] == "layeredge:latest"
    assert ray_container(by_name["stages"])["image"] == "layeredge:latest"


def test_ray_version_matches_the_dockerfile(raycluster: dict[str, Any]) -> None:
    pinned = re.search(r"ray\[default\]==([0-9.]+)", DOCKERFILE.read_text())
    assert pinned, "the Dockerfile should pin ray[default]==X"
    assert raycluster["spec"]["rayVersion"] == pinned.group(1)


def test_pods_run_as_non_root(raycluster: dict[str, Any]) -> None:
    for name, group in groups(raycluster):
        ctx = pod(group).get("securityContext", {})
        assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) != 0, f"{name}: {ctx}"


# ------------------------------------------------------------------------------------------------ run config vs cluster


def test_worker_group_fits_the_run_config(raycluster: dict[str, Any], run_config) -> None:  # noqa: ANN001
    stages = dict(groups(raycluster))["stages"]
    assert stages["replicas"] == stages["minReplicas"] == stages["maxReplicas"] == run_config.pipeline.stages
    assert float(stages["rayStartParams"]["num-cpus"]) >= run_config.cluster.cpus_per_stage
    head_cpus = float(raycluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"])
    assert head_cpus < run_config.cluster.cpus_per_stage, "the head would take a stage"
    assert run_config.cluster.placement == "strict_spread"
    assert run_config.transport.data_path == "grpc", "the raw-TCP data path is for loopback/trusted networks only"


def test_run_dir_is_on_the_shared_volume_in_every_pod(cluster_docs: list[dict[str, Any]], raycluster: dict[str, Any],
                                                      run_config) -> None:  # noqa: ANN001
    pvc = one(cluster_docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    run_dir = run_config.run_dir
    assert run_dir.startswith("/"), "run_dir must be absolute: stages and driver run in different processes"
    for name, group in groups(raycluster):
        shared = [path for path, vol in mounts(group, ray_container(group)).items()
                  if vol.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]]
        assert any(run_dir == p or run_dir.startswith(p.rstrip("/") + "/") for p in shared), \
            f"{name}: run_dir {run_dir} is not under a mount of PVC {pvc['metadata']['name']} ({shared})"


def test_driver_metrics_port_is_declared_on_the_head(raycluster: dict[str, Any], run_config) -> None:  # noqa: ANN001
    assert run_config.metrics.port, "metrics.port must be a fixed port in Kubernetes"
    assert ports(ray_container(raycluster["spec"]["headGroupSpec"])).get("le-driver") == run_config.metrics.port
    assert run_config.metrics.probe_every > 0, "LayerEdgeLinkBandwidthCollapse needs link probes"


# ------------------------------------------------------------------------------------------------ monitoring


def test_podmonitor_selects_the_ray_pods_and_names_their_port(raycluster: dict[str, Any]) -> None:
    pm = one(docs_of(PODMONITOR), "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    selector = pm["spec"]["selector"]["matchLabels"]
    assert selector
    endpoints = pm["spec"]["podMetricsEndpoints"]
    assert endpoints
    for name, group in groups(raycluster):
        labels = group["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{name}: pod labels {labels} not selected by {selector}"
        for ep in endpoints:
            assert ep["port"] in pod_ports(group), f"{name}: PodMonitor port {ep['port']!r} not in {pod_ports(group)}"
    assert {ep["port"] for ep in endpoints} == {"metrics"}


def test_scrape_config_reads_the_drivers_file_sd_through_the_sidecar(
        cluster_docs: list[dict[str, Any]], raycluster: dict[str, Any], run_config,  # noqa: ANN001
        job_docs: list[dict[str, Any]]) -> None:
    head = raycluster["spec"]["headGroupSpec"]
    svc = one(cluster_docs, "Service")
    labels = head["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items(), "Service layeredge-sd does not select the head pod"
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["targetPort"] in pod_ports(head)
    target_port = pod_ports(head)[svc_port["targetPort"]]

    sc = one(docs_of(PODMONITOR), "ScrapeConfig")
    assert sc["apiVersion"].startswith("monitoring.coreos.com/")
    (http_sd,) = sc["spec"]["httpSDConfigs"]
    url = urlparse(http_sd["url"])
    assert url.hostname.split(".")[0] == svc["metadata"]["name"] and url.port == svc_port["port"]

    # The sidecar serves <run_dir>/prometheus on that port; the URL names the file the driver writes there.
    sd_dir = posixpath.join(run_config.run_dir, "prometheus")
    sidecars = [c for c in pod(head)["containers"] if target_port in ports(c).values()]
    assert len(sidecars) == 1
    command = sidecars[0]["command"]
    assert command[command.index("--directory") + 1] == sd_dir and str(target_port) in command
    assert any(vol.get("persistentVolumeClaim") and sd_dir.startswith(p.rstrip("/") + "/")
               for p, vol in mounts(head, sidecars[0]).items())
    assert url.path == "/targets.json"
    # ... and the RayJob removes that file when the driver ends, so a finished run's targets do not stay "down".
    assert f"rm -f {posixpath.join(sd_dir, 'targets.json')}" in one(job_docs, "RayJob")["spec"]["entrypoint"]


# ------------------------------------------------------------------------------------------------ RayJob


def test_rayjob_runs_layeredge_train_on_the_raycluster(raycluster: dict[str, Any],
                                                       job_docs: list[dict[str, Any]]) -> None:
    job = one(job_docs, "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": raycluster["metadata"]["name"]}
    assert job["spec"].get("shutdownAfterJobFinishes") is False, "the RayCluster outlives the job"
    words = entrypoint_command(job["spec"]["entrypoint"])
    assert words[:2] == ["layeredge", "train"], words

    from layeredge_dist.cli.main import build_parser

    args = build_parser().parse_args(words[1:])  # exits (SystemExit) on an unknown flag
    assert args.command == "train" and args.address == "auto"
    assert args.config, "the entrypoint must pass --config"


def test_rayjob_config_path_is_the_mounted_configmap(raycluster: dict[str, Any],
                                                     job_docs: list[dict[str, Any]]) -> None:
    cm = one(job_docs, "ConfigMap")
    words = entrypoint_command(one(job_docs, "RayJob")["spec"]["entrypoint"])
    config_path = words[words.index("--config") + 1]
    head = raycluster["spec"]["headGroupSpec"]
    mounted = mounts(head, ray_container(head))
    directory, key = posixpath.split(config_path)
    assert directory in mounted, f"{directory} is not a mount of the head's ray container: {sorted(mounted)}"
    volume = mounted[directory]
    assert volume.get("configMap", {}).get("name") == cm["metadata"]["name"]
    assert key in cm["data"], f"ConfigMap {cm['metadata']['name']} has no key {key}"


def test_configmap_run_config_loads_like_the_cli_loads_it(run_config_text: str, tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(run_config_text)
    cfg = load_config(path, ["cluster.address=auto"])  # what `--address auto` does
    assert cfg.cluster.address == "auto" and cfg.cluster.nodes == 1
    assert cfg.train.checkpoint_every > 0 and cfg.train.resume
    assert config_from_dict(yaml.safe_load(run_config_text)) == load_config(path)


# ------------------------------------------------------------------------------------------------ ray up


@pytest.fixture(scope="module")
def onprem() -> dict[str, Any]:
    with ONPREM.open() as f:
        return yaml.safe_load(f)


def all_commands(cfg: dict[str, Any]) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [cmd for k in keys for cmd in cfg.get(k) or []]


def test_onprem_is_a_local_provider_with_hosts(onprem: dict[str, Any]) -> None:
    provider = onprem["provider"]
    assert provider["type"] == "local"
    assert isinstance(provider["head_ip"], str) and provider["head_ip"]
    workers = provider["worker_ips"]
    assert isinstance(workers, list) and workers and provider["head_ip"] not in workers
    assert len(set(workers)) == len(workers)
    assert onprem["auth"]["ssh_user"] and onprem["auth"]["ssh_private_key"]
    assert onprem.get("max_workers", len(workers)) == len(workers)


def test_onprem_start_commands_pin_node_ips_auth_and_metrics(onprem: dict[str, Any]) -> None:
    head = onprem["head_start_ray_commands"]
    workers = onprem["worker_start_ray_commands"]
    assert head and workers
    head_start = [c for c in head if "ray start" in c]
    worker_start = [c for c in workers if "ray start" in c]
    assert len(head_start) == 1 and len(worker_start) == 1
    assert start_flag(head_start[0], "--node-ip-address") == onprem["provider"]["head_ip"]
    assert "--head" in head_start[0]
    assert start_flag(worker_start[0], "--node-ip-address")
    assert start_flag(worker_start[0], "--address") == "$RAY_HEAD_IP:6379"
    for cmd in head_start + worker_start:
        assert "RAY_AUTH_MODE=token" in cmd, cmd
        assert start_flag(cmd, "--metrics-export-port") == "8080", cmd
    assert any("auth_token" in dst for dst in onprem.get("file_mounts", {})), "the Ray token is not copied to the hosts"


def test_onprem_never_runs_ray_stop_or_the_loopback_flag(onprem: dict[str, Any]) -> None:
    for cmd in all_commands(onprem):
        assert not re.search(r"\bray\s+stop\b", cmd), f"`ray stop` kills every Ray process of a host: {cmd}"
        assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in cmd, cmd


def test_onprem_setup_pins_torch(onprem: dict[str, Any]) -> None:
    setup = onprem["setup_commands"]
    assert torch_requirements(setup) == [TORCH_PIN], torch_requirements(setup)
    assert torch_requirements(all_commands(onprem)) == [TORCH_PIN], "torch installed elsewhere, unpinned"
    # torch must be in place before the package's own install resolves its range
    torch_at = next(i for i, c in enumerate(setup) if torch_requirements([c]))
    package_at = next(i for i, c in enumerate(setup) if any("layeredge-src" in r for r in pip_requirements(c)))
    assert torch_at < package_at


def test_onprem_validates_against_rays_cluster_schema(onprem: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    spec = importlib.util.find_spec("ray")  # locates ray without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray is not installed")
    schema_path = Path(list(spec.submodule_search_locations)[0]) / "autoscaler" / "ray-schema.json"
    if not schema_path.exists():
        pytest.skip(f"no {schema_path}")
    jsonschema.validate(onprem, json.loads(schema_path.read_text()))


# ------------------------------------------------------------------------------------------------ Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_base_torch_pin_user_and_entrypoint() -> None:
    ins = dockerfile_instructions()
    assert ins[0] == ("FROM", "python:3.11-slim")
    runs = [rest for word, rest in ins if word == "RUN"]
    assert torch_requirements(runs) == [TORCH_PIN], torch_requirements(runs)
    torch_run = next(r for r in runs if torch_requirements([r]))
    assert "--index-url" in torch_run and "TORCH_INDEX_URL" in torch_run
    assert any(w == "ARG" and r.startswith("TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu") for w, r in ins)
    package_runs = [r for r in runs if "." in pip_requirements(r)]
    assert package_runs, "the Dockerfile should `pip install .`"
    assert runs.index(torch_run) < runs.index(package_runs[0]), "torch must be installed before the package"
    users = [r for w, r in ins if w == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith(("root:", "0:"))
    entry = [r for w, r in ins if w == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["layeredge"]


def test_dockerignore_excludes_local_state_but_not_the_build_inputs() -> None:
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    for needed in (".venv", ".git", "runs", "**/__pycache__"):
        assert needed in patterns, f".dockerignore should exclude {needed}"
    sources = []
    for word, rest in dockerfile_instructions():
        if word == "COPY":
            sources += [s for s in rest.split()[:-1] if not s.startswith("--")]
    assert "pyproject.toml" in sources and "layeredge_dist" in sources
    for src in sources:
        hit = [p for p in patterns if fnmatch.fnmatch(src, p) or src.startswith(p.rstrip("/") + "/")]
        assert not hit, f"COPY {src} is excluded by .dockerignore pattern(s) {hit}"


# ------------------------------------------------------------------------------------------------ docs


def documented_alerts() -> set[str]:
    return set(re.findall(r"\bLayerEdge[A-Z][A-Za-z]+\b", OPERATIONS.read_text()))


def test_operations_doc_explains_every_alert() -> None:
    text = OPERATIONS.read_text()
    for name in ALERTS:
        assert f"**`{name}`**" in text, f"docs/operations.md has no section for {name}"


def test_documented_alerts_match_the_alert_rules() -> None:
    if not ALERT_RULES.exists():
        pytest.skip("deploy/prometheus/alert_rules.yml not written yet")
    rules = yaml.safe_load(ALERT_RULES.read_text())
    defined = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert defined == set(ALERTS), f"alert_rules.yml defines {sorted(defined)}; docs/operations.md explains {ALERTS}"
    assert documented_alerts() <= defined, f"docs name alerts that do not exist: {documented_alerts() - defined}"


def _code(text: str) -> tuple[list[str], list[str]]:
    """(lines of fenced code blocks, inline code spans) of a markdown text."""
    fenced = re.findall(r"^\s*```[^\n]*\n(.*?)^\s*```", text, flags=re.S | re.M)
    rest = re.sub(r"^\s*```[^\n]*\n.*?^\s*```", "", text, flags=re.S | re.M)
    return [line for block in fenced for line in block.splitlines()], re.findall(r"`([^`]+)`", rest)


def _layeredge_invocations(code: str) -> list[list[str]]:
    """Argument lists following each `layeredge` word of a shell snippet (each up to a shell operator)."""
    lexer = shlex.shlex(code.replace("\n", " "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes in prose
        return []
    out = []
    for i, tok in enumerate(tokens):
        if tok != "layeredge":
            continue
        args = []
        for t in tokens[i + 1:]:
            if set(t) <= set(";&|<>()"):
                break
            args.append(t)
        if args:
            out.append(args)
    return out


def test_operations_doc_commands_exist_in_the_cli() -> None:
    import argparse

    from layeredge_dist.cli.main import build_parser

    parser = build_parser()

    def subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    fenced, inline = _code(OPERATIONS.read_text())
    seen = set()
    for snippet, full in [(line, True) for line in fenced] + [(span, False) for span in inline]:
        for args in _layeredge_invocations(snippet):
            p, path = parser, []
            for word in args:
                choices = subcommands(p)
                if not choices or word.startswith("-"):
                    break
                assert word in choices, f"`layeredge {' '.join(path + [word])}` is not a command ({sorted(choices)})"
                p, path = choices[word], path + [word]
            assert path, f"`layeredge {' '.join(args)}` names no command"
            seen.add(" ".join(path))
            if full:  # whole command lines in code blocks must parse, flags and values included
                try:
                    parser.parse_args(args)
                except SystemExit:
                    pytest.fail(f"docs/operations.md: `layeredge {' '.join(args)}` does not parse")
    assert {"train", "cluster up", "cluster status"} <= seen, seen


def test_deploy_readme_lists_every_kuberay_file() -> None:
    text = (REPO / "deploy" / "README.md").read_text()
    for path in sorted(KUBERAY.glob("*.yaml")):
        assert f"kuberay/{path.name}" in text, f"deploy/README.md does not mention kuberay/{path.name}"
    for name in ALERTS:
        assert name in text
