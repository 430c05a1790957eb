"""Render the kustomize trees under deploy/ and validate them offline.

CI has no cluster, no ``kubectl`` and no ``kustomize`` binary, so this module owns a
small kustomize renderer plus the checks run on its output:

1. every rendered document is validated against the Kubernetes OpenAPI schema bundled
   with ``kubernetes-validate`` (strict: unknown fields are errors), for ``KUBE_VERSION``,
   the oldest Kubernetes minor OFP supports;
2. OFP's own invariants: every container has CPU/memory requests and limits, runs as
   non-root with a read-only root filesystem, no privilege escalation and all
   capabilities dropped; images carry an explicit tag or digest (never ``latest``); the
   database DSN only ever comes from a Secret and no Secret is committed; the server has
   native gRPC liveness/readiness probes (on the plaintext health port) and the projector
   HTTP ones; selectors of
   Services, PDBs and NetworkPolicies select a pod template; an HPA's target exists and
   sets no ``replicas`` of its own; the policy ConfigMap matches config/features_v0.yaml.

The kustomize subset (anything else in a kustomization is an error, never ignored):

- ``resources``: YAML files (multi-document) or directories holding a
  ``kustomization.yaml``, rendered recursively; paths relative to the kustomization.
- ``patches``: strategic-merge patches only, each ``{path: FILE}`` or ``{patch: INLINE}``
  without ``target``. A patch document names its target by apiVersion group, kind and
  ``metadata.name`` (and namespace when it gives one). Merge rules: mappings merge key by
  key, a ``null`` value deletes the key; lists whose items are all mappings with a
  ``name`` (containers, env, volumes, volumeMounts, ports...) merge item by item on
  ``name``, new names are appended; any other list or scalar is replaced. ``$patch``
  directives and JSON 6902 patches are not supported.
- ``namespace``: set on every namespaced resource (cluster-scoped kinds are left alone).
- ``commonLabels``: added to ``metadata.labels``, pod template labels and selectors.
- ``labels``: ``[{pairs, includeSelectors, includeTemplates}]`` with kustomize's meaning.
  Selectors touched by either: workload ``spec.selector.matchLabels``, Service
  ``spec.selector``, PodDisruptionBudget ``spec.selector.matchLabels`` and NetworkPolicy
  ``spec.podSelector.matchLabels`` (unlike kustomize, never the peers of a rule).
- ``images``: ``[{name, newName, newTag, digest}]`` on containers and initContainers.
- ``replicas``: ``[{name, count}]`` on Deployments, StatefulSets and ReplicaSets.

Transformers run in kustomize's order: patches, namespace, labels, replicas, images.

Usage (exit status 0 when every target is valid, 1 otherwise, 2 on bad usage)::

    python tools/validate_deploy.py                  # deploy/base and both overlays
    python tools/validate_deploy.py deploy/overlays/prod --print   # also dump the YAML
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import kubernetes_validate.utils  # type: ignore[import-untyped]
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TARGETS = ("deploy/base", "deploy/overlays/local", "deploy/overlays/prod")
# The oldest Kubernetes minor OFP supports (native gRPC probes are GA since 1.27).
KUBE_VERSION = "1.31.0"
POLICY_SOURCE = REPO_ROOT / "config" / "features_v0.yaml"
POLICY_CONFIGMAP = "ofp-feature-policy"
POLICY_KEY = "features.yaml"
SERVER_NAME = "ofp-server"
PROJECTOR_NAME = "ofp-projector"
GRPC_PORT = 50051
# Kubelet's gRPC probes cannot speak TLS: they call the plaintext health-only listener.
HEALTH_PORT = 50052
SECRET_ENV = ("OFP_DATABASE_URL",)

Manifest = dict[str, Any]

_KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_KUSTOMIZATION_KEYS = frozenset(
    {
        "apiVersion",
        "kind",
        "resources",
        "patches",
        "namespace",
        "commonLabels",
        "labels",
        "images",
        "replicas",
    }
)
_CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PersistentVolume",
        "StorageClass",
        "PriorityClass",
        "IngressClass",
        "APIService",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    }
)
_WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})
_SCALABLE = frozenset({"Deployment", "StatefulSet", "ReplicaSet"})


class RenderError(Exception):
    """A kustomization could not be rendered by the supported subset."""


# --------------------------------------------------------------------------- loading


def load_documents(path: Path) -> list[Manifest]:
    """Every non-empty YAML document of ``path``; each must be a mapping."""
    try:
        loaded = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise RenderError(f"{_show(path)}: cannot read YAML: {exc}") from exc
    docs: list[Manifest] = []
    for index, doc in enumerate(loaded):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise RenderError(f"{_show(path)}: document {index} is not a mapping")
        docs.append(doc)
    return docs


def _kustomization_file(directory: Path) -> Path:
    for name in _KUSTOMIZATION_FILES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise RenderError(f"{_show(directory)}: no kustomization.yaml")


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


# --------------------------------------------------------------------------- rendering


def render(directory: Path) -> list[Manifest]:
    """Render the kustomization in ``directory`` (see the module docstring for the subset)."""
    return _render(directory.resolve(), ())


def _render(directory: Path, stack: tuple[Path, ...]) -> list[Manifest]:
    if directory in stack:
        raise RenderError(f"{_show(directory)}: kustomization cycle")
    kfile = _kustomization_file(directory)
    spec = load_documents(kfile)
    if len(spec) != 1:
        raise RenderError(f"{_show(kfile)}: expected exactly one document")
    kustomization = spec[0]
    unknown = sorted(set(kustomization) - _KUSTOMIZATION_KEYS)
    if unknown:
        raise RenderError(f"{_show(kfile)}: unsupported keys {unknown}")

    docs: list[Manifest] = []
    for entry in _list_of(kustomization, "resources", kfile):
        if not isinstance(entry, str):
            raise RenderError(f"{_show(kfile)}: resources entries must be paths")
        path = (directory / entry).resolve()
        if path.is_dir():
            docs.extend(_render(path, (*stack, directory)))
        elif path.is_file():
            docs.extend(load_documents(path))
        else:
            raise RenderError(f"{_show(kfile)}: resource {entry!r} does not exist")
    _check_unique(docs, kfile)

    for patch in _list_of(kustomization, "patches", kfile):
        _apply_patch_entry(docs, patch, directory, kfile)
    namespace = kustomization.get("namespace")
    if namespace is not None:
        if not isinstance(namespace, str) or not namespace:
            raise RenderError(f"{_show(kfile)}: namespace must be a non-empty string")
        _set_namespace(docs, namespace)
    common = kustomization.get("commonLabels")
    if common is not None:
        _add_labels(docs, _str_map(common, kfile, "commonLabels"), selectors=True, templates=True)
    for entry in _list_of(kustomization, "labels", kfile):
        _apply_labels_entry(docs, entry, kfile)
    for entry in _list_of(kustomization, "replicas", kfile):
        _apply_replicas_entry(docs, entry, kfile)
    for entry in _list_of(kustomization, "images", kfile):
        _apply_image_entry(docs, entry, kfile)
    _check_unique(docs, kfile)
    return docs


def _list_of(kustomization: Mapping[str, Any], key: str, kfile: Path) -> list[Any]:
    value = kustomization.get(key, [])
    if not isinstance(value, list):
        raise RenderError(f"{_show(kfile)}: {key} must be a list")
    return value


def _str_map(value: Any, kfile: Path, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise RenderError(f"{_show(kfile)}: {what} must map strings to strings")
    return dict(value)


def _check_fields(entry: Any, allowed: frozenset[str], kfile: Path, what: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise RenderError(f"{_show(kfile)}: {what} entries must be mappings")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise RenderError(f"{_show(kfile)}: unsupported {what} fields {unknown}")
    return entry


def _check_unique(docs: Sequence[Manifest], kfile: Path) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for doc in docs:
        meta = doc.get("metadata")
        if not isinstance(doc.get("kind"), str) or not isinstance(doc.get("apiVersion"), str):
            raise RenderError(f"{_show(kfile)}: {resource_id(doc)} lacks apiVersion or kind")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            raise RenderError(f"{_show(kfile)}: {resource_id(doc)} lacks metadata.name")
        key = (_group(doc["apiVersion"]), doc["kind"], str(meta.get("namespace", "")), meta["name"])
        if key in seen:
            raise RenderError(f"{_show(kfile)}: {resource_id(doc)} is defined twice")
        seen.add(key)


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _apply_patch_entry(docs: list[Manifest], entry: Any, directory: Path, kfile: Path) -> None:
    entry = _check_fields(entry, frozenset({"path", "patch"}), kfile, "patches")
    if ("path" in entry) == ("patch" in entry):
        raise RenderError(f"{_show(kfile)}: a patch needs exactly one of path or patch")
    if "path" in entry:
        patches = load_documents(directory / str(entry["path"]))
    else:
        try:
            loaded = list(yaml.safe_load_all(str(entry["patch"])))
        except yaml.YAMLError as exc:
            raise RenderError(f"{_show(kfile)}: inline patch is not YAML: {exc}") from exc
        patches = [doc for doc in loaded if doc is not None]
        if not all(isinstance(doc, dict) for doc in patches):
            raise RenderError(f"{_show(kfile)}: inline patch documents must be mappings")
    for patch in patches:
        _apply_patch(docs, patch, kfile)


def _apply_patch(docs: list[Manifest], patch: Manifest, kfile: Path) -> None:
    directive = next(_directives(patch), None)
    if directive is not None:
        raise RenderError(f"{_show(kfile)}: patch directive {directive!r} is not supported")
    meta = patch.get("metadata")
    if not isinstance(meta, dict) or "name" not in meta or "kind" not in patch:
        raise RenderError(f"{_show(kfile)}: a patch must give kind and metadata.name")
    group = _group(str(patch.get("apiVersion", "")))
    for index, doc in enumerate(docs):
        doc_meta = doc["metadata"]
        if (
            doc["kind"] == patch["kind"]
            and doc_meta["name"] == meta["name"]
            and _group(doc["apiVersion"]) == group
            and meta.get("namespace", doc_meta.get("namespace")) == doc_meta.get("namespace")
        ):
            docs[index] = strategic_merge(doc, patch)
            return
    raise RenderError(f"{_show(kfile)}: patch target {resource_id(patch)} not found")


def _directives(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and key.startswith("$"):
                yield key
            yield from _directives(item)
    elif isinstance(value, list):
        for item in value:
            yield from _directives(item)


def strategic_merge(base: Any, patch: Any) -> Any:
    """Merge ``patch`` into ``base`` (new object; neither input is modified)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        result = copy.deepcopy(base)
        position = {item["name"]: index for index, item in enumerate(result)}
        for item in patch:
            index = position.get(item["name"])
            if index is None:
                position[item["name"]] = len(result)
                result.append(copy.deepcopy(item))
            else:
                result[index] = strategic_merge(result[index], item)
        return result
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return all(isinstance(item, dict) and isinstance(item.get("name"), str) for item in items)


def _set_namespace(docs: list[Manifest], namespace: str) -> None:
    for doc in docs:
        if doc["kind"] not in _CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace


def _apply_labels_entry(docs: list[Manifest], entry: Any, kfile: Path) -> None:
    allowed = frozenset({"pairs", "includeSelectors", "includeTemplates"})
    entry = _check_fields(entry, allowed, kfile, "labels")
    pairs = _str_map(entry.get("pairs", {}), kfile, "labels.pairs")
    selectors = entry.get("includeSelectors", False)
    templates = entry.get("includeTemplates", False)
    if not isinstance(selectors, bool) or not isinstance(templates, bool):
        raise RenderError(f"{_show(kfile)}: labels include flags must be booleans")
    # kustomize: including selectors implies including templates (or pods would not match).
    _add_labels(docs, pairs, selectors=selectors, templates=templates or selectors)


def _add_labels(
    docs: list[Manifest], pairs: Mapping[str, str], *, selectors: bool, templates: bool
) -> None:
    if not pairs:
        return
    for doc in docs:
        _ensure_map(doc, "metadata", "labels").update(pairs)
        kind = doc["kind"]
        if templates and kind in _WORKLOADS:
            _ensure_map(doc, "spec", "template", "metadata", "labels").update(pairs)
        if not selectors:
            continue
        if kind in _WORKLOADS - {"Job"} or kind == "PodDisruptionBudget":
            _ensure_map(doc, "spec", "selector", "matchLabels").update(pairs)
        elif kind == "Service":
            _ensure_map(doc, "spec", "selector").update(pairs)
        elif kind == "NetworkPolicy":
            _ensure_map(doc, "spec", "podSelector", "matchLabels").update(pairs)


def _ensure_map(doc: Manifest, *keys: str) -> dict[str, Any]:
    node: dict[str, Any] = doc
    for key in keys:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    return node


def _apply_replicas_entry(docs: list[Manifest], entry: Any, kfile: Path) -> None:
    entry = _check_fields(entry, frozenset({"name", "count"}), kfile, "replicas")
    count = entry.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise RenderError(f"{_show(kfile)}: replicas count must be an integer >= 0")
    matched = False
    for doc in docs:
        if doc["kind"] in _SCALABLE and doc["metadata"]["name"] == entry.get("name"):
            _ensure_map(doc, "spec")["replicas"] = count
            matched = True
    if not matched:
        raise RenderError(f"{_show(kfile)}: replicas target {entry.get('name')!r} not found")


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``(name, tag, digest)`` of an image reference; a registry port is not a tag."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest or None


def _apply_image_entry(docs: list[Manifest], entry: Any, kfile: Path) -> None:
    allowed = frozenset({"name", "newName", "newTag", "digest"})
    entry = _check_fields(entry, allowed, kfile, "images")
    if not all(isinstance(value, str) for value in entry.values()) or "name" not in entry:
        raise RenderError(f"{_show(kfile)}: images entries need a name and string values")
    for container in _containers(docs):
        image = container.get("image")
        if not isinstance(image, str):
            continue
        name, tag, digest = split_image(image)
        if name != entry["name"]:
            continue
        new_name = entry.get("newName", name)
        if "digest" in entry:
            container["image"] = f"{new_name}@{entry['digest']}"
        elif "newTag" in entry:
            container["image"] = f"{new_name}:{entry['newTag']}"
        else:
            suffix = f":{tag}" if tag else ""
            suffix += f"@{digest}" if digest else ""
            container["image"] = f"{new_name}{suffix}"


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
    """Strict OpenAPI-schema errors of every document, one message per bad document."""
    errors: list[str] = []
    for doc in docs:
        if not isinstance(doc.get("apiVersion"), str) or not isinstance(doc.get("kind"), str):
            errors.append(f"{resource_id(doc)}: apiVersion and kind are required")
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path) or "<root>"
            errors.append(f"{resource_id(doc)}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{resource_id(doc)}: {exc.message}")
    return errors


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
            errors.extend(f"{resource_id(doc)}: {msg}" for msg in _pod_errors(spec))
    errors.extend(_workload_errors(docs))
    errors.extend(_selector_errors(docs))
    errors.extend(_hpa_errors(docs))
    if policy_source is not None:
        errors.extend(_policy_errors(docs, policy_source))
    return errors


def _pod_errors(spec: Mapping[str, Any]) -> Iterator[str]:
    pod_security = spec.get("securityContext") or {}
    for container in _containers_of(spec):
        where = f"container {container.get('name')!r}"
        resources = container.get("resources") or {}
        for section in ("requests", "limits"):
            values = resources.get(section) or {}
            missing = [key for key in ("cpu", "memory") if key not in values]
            if missing:
                yield f"{where}: resources.{section} lacks {', '.join(missing)}"
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
            if env.get("name") in SECRET_ENV and "secretKeyRef" not in (env.get("valueFrom") or {}):
                yield f"{where}: {env.get('name')} must come from a secretKeyRef"


def _deployment(docs: Sequence[Manifest], name: str) -> Manifest | None:
    for doc in docs:
        if doc.get("kind") == "Deployment" and (doc.get("metadata") or {}).get("name") == name:
            return doc
    return None


def _workload_errors(docs: Sequence[Manifest]) -> Iterator[str]:
    server = _deployment(docs, SERVER_NAME)
    projector = _deployment(docs, PROJECTOR_NAME)
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
        if kind == "Service":
            selector = spec.get("selector")
        elif kind == "PodDisruptionBudget":
            selector = (spec.get("selector") or {}).get("matchLabels")
        elif kind == "NetworkPolicy":
            selector = (spec.get("podSelector") or {}).get("matchLabels")
        else:
            continue
        if not selector:
            continue  # an empty selector means "all pods" (NetworkPolicy default deny)
        namespace = (doc.get("metadata") or {}).get("namespace")
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


def _policy_errors(docs: Sequence[Manifest], policy_source: Path) -> Iterator[str]:
    configmap = next(
        (
            doc
            for doc in docs
            if doc.get("kind") == "ConfigMap"
            and (doc.get("metadata") or {}).get("name") == POLICY_CONFIGMAP
        ),
        None,
    )
    if configmap is None:
        yield f"ConfigMap/{POLICY_CONFIGMAP}: missing from the rendered manifests"
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
            f"{resource_id(configmap)}: data[{POLICY_KEY!r}] differs from "
            f"{_show(policy_source)}; copy the policy file into the ConfigMap"
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
        description="Render kustomizations without kustomize and validate them offline.",
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
