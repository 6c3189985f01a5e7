"""The request schemas of the clouds and of Kubernetes, read offline from the libraries that ship them, so that
``avsync cluster validate`` finds what the cloud's API would refuse before anything is deployed.

- **AWS**: a launcher node type's ``node_config`` is the body of EC2 ``RunInstances`` (Ray adds ``MinCount``,
  ``MaxCount`` and tags, and turns its own ``SubnetIds`` into ``SubnetId``). It is checked with botocore's
  ``ParamValidator`` on the EC2 service model inside the installed botocore, plus the enums that model lists
  (botocore leaves those to the service, which refuses an unknown ``InstanceType``).
- **GCP**: ``node_config`` is the body of Compute Engine ``instances.insert`` (a TPU node's: TPU ``nodes.create``),
  checked against the schemas of the API's discovery document as google-api-python-client ships it
  (``googleapiclient/discovery_cache/documents/``), turned into a JSON Schema: field names, types, enums,
  patterns, and the fields the method requires.
- **Kubernetes**: objects embedded in KubeRay manifests (pod templates, services, the autoscaler's container
  settings) are checked against the Kubernetes OpenAPI schema of a stated version, as ``kubernetes-validate``
  ships it (its strict variant: an unknown field is an error), with the closed value sets Kubernetes publishes as
  enums in its OpenAPI v3 and its API server enforces, which those JSON schemas leave out
  (:data:`KUBERNETES_ENUMS`).

Every problem is (dotted path, message). Pure: nothing here contacts a cloud or a cluster.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import json
import re
from importlib.metadata import version as installed_version
from typing import Any, Iterable

KUBERNETES_VERSION = "1.35"  # the Kubernetes whose schema manifests are checked against (`--kubernetes-version`)
_DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"  # the $id of kubernetes-validate's _definitions.json

# Values the Kubernetes API server accepts for string fields of pod specs and services (`+enum` types of
# k8s.io/api/core/v1, listed as `enum` in Kubernetes' OpenAPI v3): kubernetes-validate's schemas type them as
# plain strings, so `imagePullPolicy: Allways` would pass there and be refused by the API server.
KUBERNETES_ENUMS: dict[str, dict[str, list[str]]] = {
    "io.k8s.api.core.v1.Container": {
        "imagePullPolicy": ["Always", "IfNotPresent", "Never"],
        "terminationMessagePolicy": ["File", "FallbackToLogsOnError"],
    },
    "io.k8s.api.core.v1.PodSpec": {
        "restartPolicy": ["Always", "OnFailure", "Never"],
        "dnsPolicy": ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        "preemptionPolicy": ["PreemptLowerPriority", "Never"],
    },
    "io.k8s.api.core.v1.ContainerPort": {"protocol": ["TCP", "UDP", "SCTP"]},
    "io.k8s.api.core.v1.ServicePort": {"protocol": ["TCP", "UDP", "SCTP"]},
    "io.k8s.api.core.v1.HTTPGetAction": {"scheme": ["HTTP", "HTTPS"]},
    "io.k8s.api.core.v1.Toleration": {"effect": ["", "NoSchedule", "PreferNoSchedule", "NoExecute"]},
    "io.k8s.api.core.v1.VolumeMount": {"mountPropagation": ["None", "HostToContainer", "Bidirectional"]},
    "io.k8s.api.core.v1.SeccompProfile": {"type": ["Unconfined", "RuntimeDefault", "Localhost"]},
    "io.k8s.api.core.v1.ServiceSpec": {
        "type": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
        "sessionAffinity": ["ClientIP", "None"],
        "externalTrafficPolicy": ["Cluster", "Local"],
        "internalTrafficPolicy": ["Cluster", "Local"],
    },
}


# The packages whose schemas these checks read (module -> distribution): the `cluster` extra of avsync-ray.
SCHEMA_PACKAGES = {"jsonschema": "jsonschema", "botocore": "botocore", "googleapiclient": "google-api-python-client",
                   "kubernetes_validate": "kubernetes-validate"}  # fmt: skip


def missing_schema_packages() -> list[str]:
    return [distribution for module, distribution in SCHEMA_PACKAGES.items() if importlib.util.find_spec(module) is None]


# --- problems, one line each --------------------------------------------------------------------------------


def dotted(path: Iterable[Any]) -> str:
    """``spec.workerGroupSpecs[1].maxReplicas``; a key with a dot in it (a launcher node type) is bracketed."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif "." in str(part):  # e.g. a launcher node type `ray.worker.cpu`
            text += f'["{part}"]'
        else:
            text += f".{part}" if text else str(part)
    return text or "<root>"


def schema_problems(document: Any, schema: dict[str, Any], what: str, registry: Any = None) -> list[tuple[list[Any], str]]:
    """Every (path, message) of ``document`` against a JSON schema; a field the schema does not declare where it
    closes an object is "unknown field (not in the <what> schema)", sorted by path."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema, **({"registry": registry} if registry is not None else {}))
    problems = []
    for error in validator.iter_errors(document):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            declared, patterns = set(error.schema.get("properties", {})), list(error.schema.get("patternProperties", {}))
            for name in sorted(n for n in error.instance if n not in declared and not any(re.search(p, n) for p in patterns)):
                problems.append(([*path, name], f"unknown field (not in the {what} schema)"))
        elif error.validator == "enum":
            allowed = [value for value in error.validator_value if value is not None]  # null: the field left unset
            problems.append((path, f"{error.instance!r} is not one of {allowed}"))
        else:
            problems.append((path, error.message))
    return sorted(problems, key=lambda problem: dotted(problem[0]))


# --- AWS: EC2 RunInstances ------------------------------------------------------------------------------------


@functools.cache
def _run_instances_shape():
    import botocore.session

    return botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape


def _botocore_path(name: str) -> list[Any]:
    """botocore's ``.BlockDeviceMappings[0].Ebs`` as path parts."""
    return [int(part) if part.isdigit() else part for part in re.findall(r"[^.\[\]]+", name)]


def _enum_problems(value: Any, shape: Any, path: list[Any]) -> list[tuple[list[Any], str]]:
    """String values outside the enum the service model lists, at any depth."""
    if shape.type_name == "structure" and isinstance(value, dict):
        return [p for key, item in value.items() if key in shape.members for p in _enum_problems(item, shape.members[key], [*path, key])]
    if shape.type_name == "list" and isinstance(value, list):
        return [p for index, item in enumerate(value) for p in _enum_problems(item, shape.member, [*path, index])]
    if shape.type_name == "map" and isinstance(value, dict):
        return [p for key, item in value.items() for p in _enum_problems(item, shape.value, [*path, key])]
    if shape.type_name == "string" and shape.enum and isinstance(value, str) and value not in shape.enum:
        model = f"the EC2 model of botocore {installed_version('botocore')}"
        if len(shape.enum) <= 12:
            return [(path, f"{value!r} is not one of {shape.enum} ({model})")]
        return [(path, f"{value!r} is not one of the {len(shape.enum)} values of {model} (a newer one needs a newer botocore)")]
    return []


def run_instances_problems(node_config: Any) -> list[tuple[list[Any], str]]:
    """Problems of an AWS launcher ``node_config`` as the ``RunInstances`` request Ray makes of it."""
    from botocore.validate import ParamValidator

    if not isinstance(node_config, dict):
        return [([], "must be a mapping (the EC2 RunInstances parameters)")]
    request = {key: value for key, value in node_config.items() if key != "SubnetIds"}  # Ray's own: one becomes SubnetId
    request.update(MinCount=1, MaxCount=1)  # Ray sets the counts
    shape = _run_instances_shape()
    problems = []
    for kind, name, details in ParamValidator().validate(request, shape)._errors:  # botocore's structured report
        path = _botocore_path(name)
        if kind == "unknown field":
            problems.append(([*path, details["unknown_param"]], "unknown field (not in the EC2 RunInstances parameters)"))
        elif kind == "missing required field":
            problems.append(([*path, details["required_name"]], "required (EC2 RunInstances)"))
        elif kind == "invalid type":
            types = " or ".join(re.sub(r"<class '(.+)'>", r"\1", valid) for valid in details["valid_types"])  # "<class 'int'>"
            problems.append((path, f"{details['param']!r} is not of type {types}"))
        elif kind == "invalid range":
            problems.append((path, f"{details['param']!r} is below the minimum {details['min_allowed']}"))
        elif kind == "invalid length":
            problems.append((path, f"{details['param']!r} is shorter than {details['min_allowed']}"))
        else:
            problems.append((path, kind))
    subnets = node_config.get("SubnetIds")
    if subnets is not None and not (isinstance(subnets, list) and all(isinstance(s, str) for s in subnets)):
        problems.append((["SubnetIds"], "must be a list of subnet ids (Ray launches in the first with capacity)"))
    problems += _enum_problems(request, shape, [])
    return sorted(problems, key=lambda problem: dotted(problem[0]))


# --- GCP: Compute Engine instances.insert, TPU nodes.create ---------------------------------------------------

# (discovery document, the method's id, its resource path, method) of the requests Ray's GCP provider makes.
GCP_REQUESTS = {
    "compute": ("compute.v1.json", "compute.instances.insert", ("instances",), "insert"),
    "tpu": ("tpu.v2alpha1.json", "tpu.projects.locations.nodes.create", ("projects", "locations", "nodes"), "create"),
}


def _discovery_schema(schema: dict[str, Any], method_id: str) -> dict[str, Any]:
    """A discovery-document schema as JSON Schema: unknown fields closed, int64 as the string or number JSON
    takes, the fields ``method_id`` requires made required."""
    if "$ref" in schema:
        return {"$ref": f"#/$defs/{schema['$ref']}"}
    out: dict[str, Any] = {}
    kind, form = schema.get("type"), schema.get("format")
    if kind == "string" and form in ("int64", "uint64"):
        out["type"] = ["string", "integer"]
    elif kind in ("string", "integer", "number", "boolean", "array", "object"):
        out["type"] = kind
    if "enum" in schema:
        out["enum"] = schema["enum"]
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
            out["pattern"] = schema["pattern"]
        except re.error:  # a pattern in another regex dialect: left to the API
            pass
    if "items" in schema:
        out["items"] = _discovery_schema(schema["items"], method_id)
    if "properties" in schema:
        out["properties"] = {name: _discovery_schema(item, method_id) for name, item in schema["properties"].items()}
        out["additionalProperties"] = False
        if required := [n for n, item in schema["properties"].items() if method_id in item.get("annotations", {}).get("required", [])]:
            out["required"] = required
    elif "additionalProperties" in schema:
        out["additionalProperties"] = _discovery_schema(schema["additionalProperties"], method_id)
    return out


@functools.cache
def gcp_request_schema(api: str) -> dict[str, Any]:
    """The JSON Schema of the request body of a GCP method Ray's provider calls (``compute``, ``tpu``)."""
    document_name, method_id, resources, method = GCP_REQUESTS[api]
    documents = importlib.resources.files("googleapiclient") / "discovery_cache" / "documents"
    document = json.loads((documents / document_name).read_text())
    node = document
    for resource in resources:
        node = node["resources"][resource]
    body = node["methods"][method]["request"]["$ref"]
    return {"$defs": {name: _discovery_schema(s, method_id) for name, s in document["schemas"].items()}, "$ref": f"#/$defs/{body}"}


def gcp_request_problems(node_config: dict[str, Any], api: str) -> list[tuple[list[Any], str]]:
    """Problems of a GCP launcher ``node_config`` as the body Ray sends (it adds the node's ``name`` and labels;
    ``sourceInstanceTemplate`` is a query parameter of instances.insert, not part of the body)."""
    body = {"name": "ray-node", **{key: value for key, value in node_config.items() if key != "sourceInstanceTemplate"}}
    what = {"compute": "Compute Engine instances.insert", "tpu": "TPU nodes.create"}[api]
    return schema_problems(body, gcp_request_schema(api), what)


# --- Kubernetes ---------------------------------------------------------------------------------------------


def kubernetes_versions() -> list[str]:
    """The Kubernetes minor versions whose schemas kubernetes-validate ships."""
    from kubernetes_validate.utils import all_versions

    return sorted({re.match(r"\d+\.\d+", version).group(0) for version in all_versions()}, key=lambda v: tuple(map(int, v.split("."))))


@functools.cache
def _kubernetes_registry(version: str):
    from referencing import Registry, Resource

    if version not in kubernetes_versions():
        raise ValueError(f"Kubernetes {version}: kubernetes-validate {installed_version('kubernetes-validate')} ships {kubernetes_versions()}")
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}.0-local-strict"
    definitions = json.loads((folder / "_definitions.json").read_text())
    for name, fields in KUBERNETES_ENUMS.items():
        for field, values in fields.items():
            definitions["$defs"][name]["properties"][field]["enum"] = [*values, None]  # null: unset, as the API reads it
    return Registry().with_resource(_DEFINITIONS_ID, Resource.from_contents(definitions))


@functools.cache
def _kubernetes_kinds(version: str) -> dict[tuple[str, str, str], str]:
    """(group, version, kind) -> definition name, of every built-in kind of that Kubernetes."""
    registry = _kubernetes_registry(version)
    definitions = registry.contents(_DEFINITIONS_ID)["$defs"]
    return {(gvk["group"], gvk["version"], gvk["kind"]): name for name, d in definitions.items() for gvk in d.get("x-kubernetes-group-version-kind", [])}


def kubernetes_definition(api_version: str, kind: str, version: str = KUBERNETES_VERSION) -> str | None:
    """The definition of a built-in Kubernetes kind (``v1``, ``PersistentVolumeClaim``), None for any other."""
    group, _, api = api_version.rpartition("/")
    return _kubernetes_kinds(version).get((group, api, kind))


def kubernetes_problems(document: Any, definition: str, version: str = KUBERNETES_VERSION) -> list[tuple[list[Any], str]]:
    """Problems of ``document`` as the Kubernetes object ``definition`` (``io.k8s.api.core.v1.PodTemplateSpec``)."""
    schema = {"$ref": f"{_DEFINITIONS_ID}#/$defs/{definition}"}
    return schema_problems(document, schema, f"Kubernetes {version} {definition.rsplit('.', 1)[1]}", _kubernetes_registry(version))
