"""The deploy/ manifests and the Dockerfiles pass the offline checks CI runs.

tools/validate_deploy.py renders the kustomizations with `kubectl kustomize` and
validates them against the bundled Kubernetes schema plus OFP's invariants; hadolint
lints the Dockerfiles. The tools come from the dev extras, so a missing one is a failure.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VALIDATOR_PATH = REPO_ROOT / "tools" / "validate_deploy.py"
TARGETS = ("deploy/base", "deploy/overlays/local", "deploy/overlays/prod")
DOCKERFILES = ("Dockerfile.server", "Dockerfile.projector")
DEV_EXTRAS_HINT = "install the dev extras: pip install -e '.[dev]'"


def _load_validator() -> ModuleType:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.fail(f"kubernetes-validate is not installed; {DEV_EXTRAS_HINT}")
    spec = importlib.util.spec_from_file_location("validate_deploy", VALIDATOR_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("validate_deploy", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def validator() -> ModuleType:
    return _load_validator()


@pytest.fixture(scope="module")
def prod_docs(validator: ModuleType) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = validator.render(REPO_ROOT / "deploy/overlays/prod")
    return docs


def _only(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} matches"
    return matches[0]


def _server_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = _only(docs, "Deployment", "ofp-server")["spec"]["template"]["spec"]
    return pod


# ----------------------------------------------------------------------- the manifests


@pytest.mark.parametrize("target", TARGETS)
def test_manifests_validate_when_rendered_for_each_target(
    validator: ModuleType, target: str
) -> None:
    errors = validator.validate_target(REPO_ROOT / target)

    assert errors == [], "\n".join(errors)


def test_validator_cli_exits_zero_when_all_targets_are_valid() -> None:
    result = subprocess.run(
        [sys.executable, str(VALIDATOR_PATH)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    for target in TARGETS:
        assert f"ok   {target}:" in result.stderr


def test_overlays_apply_replicas_images_and_file_bus_when_rendered(
    validator: ModuleType, prod_docs: list[dict[str, Any]]
) -> None:
    local = validator.render(REPO_ROOT / "deploy/overlays/local")

    assert _only(local, "ConfigMap", "ofp-env")["data"]["OFP_BUS_KIND"] == "file"
    assert _only(local, "Deployment", "ofp-projector")["spec"]["replicas"] == 1
    assert _only(local, "HorizontalPodAutoscaler", "ofp-server")["spec"]["minReplicas"] == 1
    assert _only(prod_docs, "ConfigMap", "ofp-env")["data"]["OFP_BUS_KIND"] == "kinesis"
    assert _only(prod_docs, "Deployment", "ofp-projector")["spec"]["replicas"] == 2
    assert _only(prod_docs, "HorizontalPodAutoscaler", "ofp-server")["spec"]["minReplicas"] == 3
    image = _server_pod(prod_docs)["containers"][0]["image"]
    assert image == "registry.example.com/ofp/ofp-server:0.1.0"
    assert all(
        d["metadata"].get("namespace") == "ofp" for d in prod_docs if d["kind"] != "Namespace"
    )


# ----------------------------------------------------------------------- typos rejected


def test_validation_rejects_manifest_when_a_required_field_is_misspelled(
    validator: ModuleType, prod_docs: list[dict[str, Any]]
) -> None:
    docs = copy.deepcopy(prod_docs)
    pod = _server_pod(docs)
    pod["contianers"] = pod.pop("containers")

    errors = validator.schema_errors(docs)

    # The schema reports the missing required field first; either way it is rejected.
    assert any("Deployment/ofp-server: spec.template.spec" in e for e in errors), errors


def test_validation_rejects_manifest_when_an_optional_field_is_misspelled(
    validator: ModuleType, prod_docs: list[dict[str, Any]]
) -> None:
    docs = copy.deepcopy(prod_docs)
    security = _server_pod(docs)["containers"][0]["securityContext"]
    security["readOnlyRootFileSystem"] = security.pop("readOnlyRootFilesystem")

    errors = validator.validate_documents(docs)

    assert any("'readOnlyRootFileSystem' was unexpected" in e for e in errors), errors
    assert any("readOnlyRootFilesystem must be true" in e for e in errors), errors


def test_validation_rejects_manifest_when_replicas_is_not_an_integer(
    validator: ModuleType, prod_docs: list[dict[str, Any]]
) -> None:
    docs = copy.deepcopy(prod_docs)
    _only(docs, "Deployment", "ofp-projector")["spec"]["replicas"] = "two"

    errors = validator.validate_documents(docs)

    assert any("spec.replicas" in e and "'two'" in e for e in errors), errors


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda pod: pod["containers"][0]["securityContext"].update(
                readOnlyRootFilesystem=False
            ),
            "readOnlyRootFilesystem must be true",
        ),
        (
            lambda pod: pod["containers"][0]["resources"].pop("limits"),
            "resources.limits lacks memory",
        ),
        (
            lambda pod: pod["containers"][0]["resources"]["limits"].update(cpu="2"),
            "resources.limits.cpu must not be set on the feature server",
        ),
        (
            lambda pod: pod["containers"][0].update(readinessProbe={"tcpSocket": {"port": 50051}}),
            "readinessProbe must be a native grpc probe",
        ),
        (
            lambda pod: pod["containers"][0].update(image="ofp-server:latest"),
            "needs an explicit tag",
        ),
        (
            lambda pod: pod["containers"][0]["env"].append(
                {"name": "OFP_DATABASE_URL", "value": "postgresql://u:p@db/ofp"}
            ),
            "OFP_DATABASE_URL must come from a secretKeyRef",
        ),
    ],
    ids=["writable-root", "no-limits", "cpu-limit", "tcp-probe", "latest-image", "literal-dsn"],
)
def test_invariants_reject_server_pod_when_a_rule_is_broken(
    validator: ModuleType, prod_docs: list[dict[str, Any]], mutate: Any, expected: str
) -> None:
    docs = copy.deepcopy(prod_docs)
    mutate(_server_pod(docs))

    errors = validator.invariant_errors(docs)

    assert any(expected in e for e in errors), errors


def test_validator_cli_exits_nonzero_when_a_kustomization_has_a_typo(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        textwrap.dedent(
            f"""\
            apiVersion: kustomize.config.k8s.io/v1beta1
            kind: Kustomization
            resources:
              - {os.path.relpath(REPO_ROOT / "deploy/base", tmp_path)}
            patches:
              - patch: |-
                  apiVersion: apps/v1
                  kind: Deployment
                  metadata:
                    name: ofp-projector
                  spec:
                    replicas: "two"
            """
        ),
        encoding="utf-8",
    )

    result = subprocess.run(
        [sys.executable, str(VALIDATOR_PATH), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 1, result.stderr
    assert "Deployment/ofp-projector: spec.replicas" in result.stderr


def test_render_rejects_kustomization_when_a_key_is_misspelled(
    validator: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "resources: []\nconfigMapGeneratr: []\n", encoding="utf-8"
    )

    errors = validator.validate_target(tmp_path)

    assert len(errors) == 1 and "configMapGeneratr" in errors[0], errors


def test_policy_configmap_is_generated_from_the_policy_file_and_rolls_the_pods(
    validator: ModuleType, prod_docs: list[dict[str, Any]]
) -> None:
    maps = [d for d in prod_docs if d["kind"] == "ConfigMap"
            and d["metadata"]["name"].startswith("ofp-feature-policy-")]
    assert len(maps) == 1
    name = maps[0]["metadata"]["name"]
    policy = (REPO_ROOT / "config/features_v0.yaml").read_text(encoding="utf-8")
    assert maps[0]["data"]["features.yaml"] == policy
    for workload in ("ofp-server", "ofp-projector"):
        pod = _only(prod_docs, "Deployment", workload)["spec"]["template"]["spec"]
        assert name in [v.get("configMap", {}).get("name") for v in pod["volumes"]]

    docs = copy.deepcopy(prod_docs)
    maps = [d for d in docs if d["metadata"]["name"] == name]
    maps[0]["metadata"]["name"] = "ofp-feature-policy"  # a copy, not the generated map
    errors = validator.invariant_errors(docs)
    assert any("is not in the manifests" in e for e in errors), errors


def test_migration_job_migrates_and_each_workload_uses_its_own_role(
    validator: ModuleType, prod_docs: list[dict[str, Any]]
) -> None:
    job = _only(prod_docs, "Job", "ofp-migrate")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["ofp", "migrate"]
    assert _only(prod_docs, "ConfigMap", "ofp-env")["data"]["OFP_AUTO_MIGRATE"] == "false"
    keys = {}
    for doc in prod_docs:
        pod = validator.pod_spec(doc)
        for c in (pod or {}).get("containers", []):
            for env in c.get("env", []):
                if env["name"] == "OFP_DATABASE_URL":
                    keys[doc["metadata"]["name"]] = env["valueFrom"]["secretKeyRef"]["key"]
    assert keys == {"ofp-migrate": "migrator-url", "ofp-projector": "projector-url",
                    "ofp-server": "server-url"}

    docs = copy.deepcopy(prod_docs)
    for env in _server_pod(docs)["containers"][0]["env"]:
        if env["name"] == "OFP_DATABASE_URL":
            env["valueFrom"]["secretKeyRef"]["key"] = "migrator-url"
    _only(docs, "ConfigMap", "ofp-env")["data"]["OFP_AUTO_MIGRATE"] = "true"
    errors = validator.invariant_errors(docs)
    assert any("must come from the key 'server-url'" in e for e in errors), errors
    assert any("OFP_AUTO_MIGRATE must be" in e for e in errors), errors


def test_invariants_reject_an_environment_variable_that_names_no_setting(
    validator: ModuleType, prod_docs: list[dict[str, Any]]
) -> None:
    docs = copy.deepcopy(prod_docs)
    _only(docs, "ConfigMap", "ofp-env")["data"]["OFP_BATCH_SIZ"] = "10"

    errors = validator.invariant_errors(docs)

    assert errors == ["ofp/ConfigMap/ofp-env: OFP_BATCH_SIZ is not a setting"
                      " (libs/ofp/config.py)"], errors


def test_podmonitor_is_in_prod_only_and_checked_by_hand(
    validator: ModuleType, prod_docs: list[dict[str, Any]]
) -> None:
    local = validator.render(REPO_ROOT / "deploy/overlays/local")
    assert not [d for d in local if d["kind"] == "PodMonitor"]
    monitor = _only(prod_docs, "PodMonitor", "ofp")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"

    docs = copy.deepcopy(prod_docs)
    monitor = _only(docs, "PodMonitor", "ofp")
    monitor["spec"]["podMetricsEndpoint"] = monitor["spec"].pop("podMetricsEndpoints")
    monitor["spec"]["selector"]["matchExpressions"][0]["values"].append("ofp-sever")
    errors = validator.validate_documents(docs)
    assert any("unknown field 'podMetricsEndpoint'" in e for e in errors), errors
    assert any("app.kubernetes.io/name=ofp-sever matches no pod" in e for e in errors), errors


# ----------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint_when_linted(dockerfile: str) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.is_file():
        pytest.fail(f"hadolint not found at {hadolint}; {DEV_EXTRAS_HINT}")

    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "info", dockerfile],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout
