"""infra/: the deployment files stay in step with the code.

Docker cannot run here, so the Dockerfile is checked for what can be checked (base image =
the Ray pin, README's install line, layers, user, healthcheck). The KubeRay manifests, the
cluster launcher YAML and the Grafana dashboard must equal what ``infra/generate.py`` renders
from ``serving/config.yaml``, ``constraints.txt`` and ``infra/infra.yaml``; the dashboard may
query only metrics the code exports, checked by parsing the code and by scraping a real local
Ray cluster's metrics agents.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shlex
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
METRIC_MODULES = (ROOT / "actors" / "metrics.py", ROOT / "serving" / "metrics.py")


def _load_generate():
    spec = importlib.util.spec_from_file_location("lacquer_infra_generate", INFRA / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


gen = _load_generate()


@pytest.fixture(scope="module")
def config():
    return gen.InfraConfig.load()


def _yaml(rel: str):
    return yaml.safe_load((INFRA / rel).read_text())


def _containers(pod_template):
    return pod_template["spec"]["containers"]


# -- every file parses; generated files are up to date -------------------------------------------
def test_every_yaml_and_json_file_parses():
    files = sorted(p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml", ".json"})
    assert len(files) >= 7
    for path in files:
        if path.suffix == ".json":
            assert isinstance(json.loads(path.read_text()), dict), path
        else:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
            assert docs and all(isinstance(d, dict) for d in docs), path


def test_committed_files_equal_the_generator_output(config):
    for path, text in gen.outputs(config).items():
        assert path.exists(), f"{path} missing: run python infra/generate.py"
        assert path.read_text() == text, f"{path} is stale: run python infra/generate.py"


# -- Dockerfile --------------------------------------------------------------------------------
def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_base_image_matches_the_ray_pin_and_python(config):
    froms = [a for i, a in _dockerfile_instructions() if i == "FROM"]
    assert froms == [gen.base_image(config)]
    ray_pin = gen.pinned("ray")
    assert froms[0] == f"rayproject/ray:{ray_pin}-{config.python}-gpu"
    # The image's Python is the one the pins were resolved with (ruff's target version) and
    # allowed by requires-python.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["ruff"]["target-version"] == config.python
    floor = re.search(r">=\s*3\.(\d+)", pyproject["project"]["requires-python"]).group(1)
    assert int(config.python.removeprefix("py3")) >= int(floor)


def test_dockerfile_installs_lacquer_the_way_readme_does():
    readme = (ROOT / "README.md").read_text()
    readme_line = re.search(r"pip install (-c constraints\.txt -e \.)(?=\s|$)", readme)
    assert readme_line, "README's install line not found"
    assert f"pip install {readme_line.group(1)}" == gen.INSTALL_LINE
    runs = [a for i, a in _dockerfile_instructions() if i == "RUN"]
    assert any(r.startswith(gen.INSTALL_LINE) for r in runs)
    steps = _dockerfile_instructions()
    # Dependencies (pyproject + constraints) are installed before any source is copied.
    copies = [(n, a) for n, (i, a) in enumerate(steps) if i == "COPY"]
    deps_copy = next(n for n, a in copies if "pyproject.toml" in a and "constraints.txt" in a)
    deps_run = next(
        n for n, (i, a) in enumerate(steps) if i == "RUN" and "-r /tmp/requirements.txt" in a
    )
    install = next(n for n, (i, a) in enumerate(steps) if i == "RUN" and gen.INSTALL_LINE in a)
    source_copies = [n for n, a in copies if n != deps_copy]
    assert deps_copy < deps_run < min(source_copies) <= max(source_copies) < install
    # Every package setuptools installs is copied in.
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    copied = {a.split()[-1].removeprefix("./") for _, a in copies}
    for pattern in include["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in copied, pattern
    # Non-root at the end, the Ray image's user; a healthcheck whose script exists.
    users = [a for i, a in steps if i == "USER"]
    assert users[-1] == "ray"
    health = [a for i, a in steps if i == "HEALTHCHECK"]
    assert len(health) == 1
    script = re.search(r"/home/ray/lacquer/(\S+\.sh)", health[0]).group(1)
    assert (ROOT / script).exists()
    assert (INFRA / "docker" / "Dockerfile.dockerignore").exists()


def test_dockerfile_installs_the_debian_packages_lacquer_needs():
    apt = " ".join(a for i, a in _dockerfile_instructions() if i == "RUN" and "apt-get" in a)
    needed = {"ffmpeg"}  # CI's reference meter and compressed decoding
    corpus = (ROOT / "lacquer" / "commands" / "corpus.py").read_text()
    named = re.search(r"Debian packages\s+``([^`]+)``", corpus)
    if named:
        needed |= set(named.group(1).split())
    missing = {p for p in needed if not re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])", apt)}
    assert not missing


def test_pinned_versions_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        req = Requirement(dep)
        version = gen.pinned(req.name)
        assert req.specifier.contains(version, prereleases=True), (dep, version)


# -- KubeRay -----------------------------------------------------------------------------------
def test_rayservice_serve_config_is_serving_config_yaml(config, monkeypatch):
    from serving.config import TOKEN_ENV, ServingConfig

    service = _yaml("kuberay/rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    deployed = yaml.safe_load(service["spec"]["serveConfigV2"])
    source = gen.serve_source()
    (app,) = source["applications"]
    (dep_app,) = deployed["applications"]
    # Everything but the app's args (and http_options, which follow host/port) is the file's.
    assert {k: v for k, v in deployed.items() if k not in ("applications", "http_options")} == {
        k: v for k, v in source.items() if k not in ("applications", "http_options")
    }
    assert {k: v for k, v in dep_app.items() if k != "args"} == {
        k: v for k, v in app.items() if k != "args"
    }
    overrides = config.serve.overrides
    assert dep_app["args"] == {**app["args"], **overrides}
    assert deployed["http_options"] == {
        "host": dep_app["args"]["host"],
        "port": dep_app["args"]["port"],
    }
    # The builder accepts the args; the public bind is usable once the token Secret is set.
    monkeypatch.setenv(TOKEN_ENV, "test-token")
    sc = ServingConfig.from_args(dep_app["args"]).validate()
    assert sc.device == "cuda" and sc.group_gpus() >= 1
    monkeypatch.delenv(TOKEN_ENV)
    from mastering.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError):
        ServingConfig.from_args(dep_app["args"]).validate()


def test_rayservice_cluster_cpu_head_gpu_workers_autoscaling_and_tokens(config):
    from serving.config import ServingConfig

    cluster = _yaml("kuberay/rayservice.yaml")["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == gen.pinned("ray")
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["authOptions"] == {"mode": "token", "secretName": config.secrets.ray_auth}
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    for c in _containers(head["template"]):
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
    (group,) = cluster["workerGroupSpecs"]
    for c in _containers(group["template"]):
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    # Enough GPU pods for every stage group at the Serve app's max replicas.
    args = yaml.safe_load(_yaml("kuberay/rayservice.yaml")["spec"]["serveConfigV2"])
    sc = ServingConfig.from_args(args["applications"][0]["args"])
    per_pod = int(_containers(group["template"])[0]["resources"]["limits"]["nvidia.com/gpu"])
    needed = sc.group_gpus() * len(sc.stage_groups()) * sc.max_replicas
    assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert group["maxReplicas"] * per_pod >= needed
    for c in _containers(head["template"]) + _containers(group["template"]):
        assert c["image"] == config.image
        (env,) = [e for e in c["env"] if e["name"] == "LACQUER_API_TOKEN"]
        assert env["valueFrom"]["secretKeyRef"]["name"] == config.secrets.api_token
        assert "value" not in env  # never a literal token


def test_rayjob_runs_lacquer_render_on_the_raycluster(config):
    from lacquer.cli import build_parser

    cluster = _yaml("kuberay/raycluster.yaml")
    job = _yaml("kuberay/rayjob-render.yaml")
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert cluster["spec"]["authOptions"]["mode"] == "token"
    # The entrypoint is a valid `lacquer render` command line for this CLI.
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["lacquer", "render"]
    args = build_parser().parse_args(argv[1:])
    (group,) = cluster["spec"]["workerGroupSpecs"]
    gpus_per_pod = int(_containers(group["template"])[0]["resources"]["limits"]["nvidia.com/gpu"])
    assert args.gpus == group["replicas"] * gpus_per_pod
    assert args.batch == config.render.batch and args.mode == config.render.mode
    # Input and output live on the PVC mounted in every pod of the cluster.
    for pod in [cluster["spec"]["headGroupSpec"]["template"], group["template"]]:
        (volume,) = pod["spec"]["volumes"]
        assert volume["persistentVolumeClaim"]["claimName"] == config.render.pvc
        (mount,) = _containers(pod)[0]["volumeMounts"]
        assert args.input.startswith(mount["mountPath"] + "/")
        assert args.out.startswith(mount["mountPath"] + "/")
    submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    assert {e["name"] for e in submitter["env"]} >= {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}


# -- cluster launcher ----------------------------------------------------------------------------
def test_cluster_launcher_config_is_valid_for_ray(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    launcher = _yaml("cluster-launcher/lacquer-gpu.yaml")
    validate_config(prepare_config(launcher))  # Ray's own schema
    assert launcher["docker"]["image"] == config.image
    assert any(gen.INSTALL_LINE in c for c in launcher["setup_commands"])
    gpu = launcher["available_node_types"]["ray.worker.gpu"]
    assert gpu["min_workers"] <= gpu["max_workers"] <= launcher["max_workers"]
    head = launcher["available_node_types"][launcher["head_node_type"]]
    assert head["resources"].get("GPU") == 0


# -- monitoring --------------------------------------------------------------------------------
def _metric_names(path: Path) -> dict[str, str]:
    """Metric name -> kind (Counter, Gauge, Histogram) created in ``path``: the first argument
    of each ``Counter(...)``/``Gauge(...)``/``Histogram(...)`` call, a string or a
    module-level string constant."""
    tree = ast.parse(path.read_text())
    consts = {
        t.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for t in node.targets
        if isinstance(t, ast.Name) and isinstance(node.value.value, str)
    }
    names = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"Counter", "Gauge", "Histogram"}
        ):
            arg = node.args[0]
            name = arg.value if isinstance(arg, ast.Constant) else consts[arg.id]
            names[name] = node.func.id
            for kw in node.keywords:  # Ray's C++ side takes ASCII descriptions only
                if kw.arg == "description" and isinstance(kw.value, ast.Constant):
                    assert kw.value.value.isascii(), (path, name)
    return names


def _exported(name: str, kind: str) -> set[str]:
    """Series names Ray's Prometheus export gives a metric (prefix ``ray_``; counters end in
    ``_total``; histograms have ``_bucket``/``_sum``/``_count``)."""
    base = f"ray_{name}"
    if kind == "Counter":
        return {base if base.endswith("_total") else f"{base}_total"}
    if kind == "Histogram":
        return {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return {base}


def _code_metrics() -> dict[str, str]:
    names: dict[str, str] = {}
    for path in METRIC_MODULES:
        names.update(_metric_names(path))
    return names


def _dashboard_series() -> set[str]:
    board = json.loads((INFRA / "monitoring" / "grafana" / "lacquer-dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    return {m for e in exprs for m in re.findall(r"\bray_[A-Za-z0-9_:]+", e)}


def test_dashboard_queries_only_metrics_the_code_exports():
    code = _code_metrics()
    assert len(code) >= 10
    exported = {s: name for name, kind in code.items() for s in _exported(name, kind)}
    queried = _dashboard_series()
    assert queried <= set(exported), sorted(queried - set(exported))
    # ...and every exported metric has a panel.
    assert {exported[s] for s in queried} == set(code)


def test_prometheus_scrapes_rays_service_discovery_file():
    prom = _yaml("monitoring/prometheus.yml")
    files = [
        f
        for job in prom["scrape_configs"]
        for sd in job.get("file_sd_configs", [])
        for f in sd["files"]
    ]
    assert "/tmp/ray/prom_metrics_service_discovery.json" in files


def _record_everything() -> bool:
    """In a Ray worker: record every farm and Serve metric once (GPU utilization is set
    directly: its NVML reading needs a CUDA device)."""
    from actors import metrics as farm
    from serving.metrics import metrics as serve_metrics

    farm.song_done(180.0, wall_s=1.5)
    farm.song_failed("input")
    farm.song_retried()
    farm.batch_submitted(4)
    farm.progress(songs_per_s=2.0, realtime_x=360.0, in_flight=8, pending=100)
    farm.stage_batch({"eq": 0.01, "decode": 0.2})
    if farm.gpu_utilization() is None:
        farm.farm_metrics().gpu_utilization.set(0.0, {"gpu": "0"})
    serve_metrics().request("/v1/master", 200, 0.3)
    serve_metrics().request("/v1/master", 422, 0.01)
    serve_metrics().batch("eq+compressor", 4, 0.05)
    serve_metrics().feedback_failures.inc()
    return True


@pytest.mark.ray
def test_dashboard_metrics_are_scraped_from_a_running_cluster(ray_cluster):
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack tests/ on sys.path
    recorder = ray.remote(num_cpus=0)(_record_everything)
    assert ray.get(recorder.remote())
    wanted = _dashboard_series()
    ports = [(n["NodeManagerAddress"], n["MetricsExportPort"]) for n in ray.nodes() if n["Alive"]]
    seen: set[str] = set()
    deadline = time.monotonic() + 60  # Ray's agents export every ~10 s
    while time.monotonic() < deadline and not wanted <= seen:
        for host, port in ports:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                continue
            seen |= {line.split("{")[0].split(" ")[0] for line in text.splitlines()}
        if not wanted <= seen:
            time.sleep(1.0)
    assert wanted <= seen, sorted(wanted - seen)
