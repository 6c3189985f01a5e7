"""The package's import graph keeps its layers: the shard contract and the small shared modules sit below the
features (curation, training, evaluation, serving), no feature imports another's internals, only the modules
that run Ray import it, and there is no import cycle (lazy imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "avsync_ray"
FEATURES = ("curation", "training", "evaluation", "serve")
# generate: the one-off verb; mlflow_models: the pyfunc wrappers (they generate as the verb does); runs: the tables
# `avsync runs` reads from MLflow (evaluation's tables); jobs, cluster_configs, cloud_schemas: submitting and checking
# cluster jobs and configs.
APPS = ("cli", "demo", "generate", "mlflow_models", "runs", "jobs", "cluster_configs", "cloud_schemas", "__main__")
# Lower layers: what every feature may use. None of them may import a feature or an app.
# The paper's metrics (``metrics``) sit here too: curation's sync filter, training's loss, evaluation and serving use them.
SHARED = ("config", "devices", "faults", "storage", "sources", "media", "models", "pipelines", "shards", "examples", "synth",
          "conditioning", "metrics", "nested", "tracking", "lineage", "ray_runtime", "batch_jobs")  # fmt: skip
# The only modules that run Ray (or start it through ray_runtime / batch_jobs).
RAY_MODULES = {
    "avsync_ray.cli", "avsync_ray.demo", "avsync_ray.ray_runtime", "avsync_ray.batch_jobs", "avsync_ray.curation.pipeline",
    "avsync_ray.training.loops", "avsync_ray.training.launcher", "avsync_ray.training.precompute", "avsync_ray.evaluation.batch",
    "avsync_ray.jobs", "avsync_ray.cluster_configs",
}  # fmt: skip
RAY_PACKAGES = ("avsync_ray.serve",)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every module's imports of ``avsync_ray.*`` modules and of ``ray``, at any depth of its code."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in modules}
        graph[name] = {m for m in found if m in modules or m == "ray" or m.startswith("ray.")}
    return graph


GRAPH = _imports()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_graph_sees_every_module():
    assert {"avsync_ray.shards.writer", "avsync_ray.curation.pipeline", "avsync_ray.devices"} <= set(GRAPH)


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m) in SHARED))
def test_shared_modules_import_no_feature_and_no_app(module):
    above = {m for m in GRAPH[module] if m.startswith("avsync_ray.") and _layer(m) in FEATURES + APPS}
    assert not above, f"{module} imports {sorted(above)}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m) in FEATURES))
def test_features_do_not_import_each_others_internals(module):
    others = {m for m in GRAPH[module] if _layer(m) in FEATURES and _layer(m) != _layer(module)}
    assert not others, f"{module} imports {sorted(others)}"


def test_only_the_ray_modules_import_ray():
    runs_ray = {m for m, imports in GRAPH.items() if any(i == "ray" or i.startswith("ray.") or i in RAY_MODULES - {"avsync_ray.cli", "avsync_ray.demo"} for i in imports)}
    unexpected = {m for m in runs_ray - RAY_MODULES if not m.startswith(RAY_PACKAGES)}
    assert not unexpected, f"these modules import Ray: {sorted(unexpected)}"
    for module in ("avsync_ray.models", "avsync_ray.pipelines", "avsync_ray.media", "avsync_ray.shards"):
        assert not any(m.startswith(module) for m in runs_ray), module


def test_there_is_no_import_cycle():
    internal = {m: sorted(i for i in imports if i in GRAPH and i != m) for m, imports in GRAPH.items()}
    finished: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str, stack: list[str]) -> None:
        for imported in internal[module]:
            if imported in stack:
                cycles.append(stack[stack.index(imported) :] + [imported])
            elif imported not in finished:
                visit(imported, [*stack, imported])
        finished.add(module)

    for module in sorted(internal):
        if module not in finished:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles[:3]}"
