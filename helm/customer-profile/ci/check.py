#!/usr/bin/env python3
"""CI check of the customer-profile chart, offline.

For each values file in this folder: `helm template` into target/helm/<case>.yaml, then
- every document is validated against the Kubernetes OpenAPI schemas (kubernetes-validate,
  strict: unknown fields are errors) for each version in KUBERNETES_VERSIONS; a kind the
  validator does not know is an error, except the ServiceMonitor CRD, which is validated
  against SERVICE_MONITOR_SCHEMA below (the fields of monitoring.coreos.com/v1 this chart uses);
- names and label values are checked against Kubernetes' naming rules;
- the rendered config.toml must parse as TOML and hold what the values asked for;
- the StatefulSet must have the gRPC probes, the volume claim, the security context, the
  secret references and a termination grace above the drain grace.
Then values that must be refused are rendered and must fail with the expected message.

Run from the repository root: python3 helm/customer-profile/ci/check.py
Needs helm on PATH and the kubernetes-validate package (which brings jsonschema and PyYAML).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import yaml
from kubernetes_validate import utils as kv

CHART = Path(__file__).resolve().parent.parent
CI = CHART / "ci"
OUT = Path("target/helm")
RELEASE, NAMESPACE = "customer-profile", "crm"
# The oldest version the chart supports (Chart.yaml kubeVersion) and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.27.0", kv.latest_version()]

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # Service names (RFC 1035 label)
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

DURATION = {"type": "string", "pattern": r"^(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer", "minimum": 0},
        "replacement": {"type": "string"},
        "action": {"enum": [
            "replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
            "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
            "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal", "KeepEqual",
            "dropequal", "DropEqual"]},
    },
}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                           "labels": STRING_MAP, "annotations": STRING_MAP},
            "additionalProperties": False,
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": STRING_MAP,
                                   "matchExpressions": {"type": "array", "items": {"type": "object"}}},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"},
                                   "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": RELABEL},
                            "metricRelabelings": {"type": "array", "items": RELABEL},
                        },
                    },
                },
            },
        },
    },
}
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_SCHEMA}

errors: list[str] = []


def error(case: str, message: str) -> None:
    errors.append(f"{case}: {message}")
    print(f"ERROR {case}: {message}")


def helm_template(values: list[Path], extra: list[str] = ()) -> subprocess.CompletedProcess:
    cmd = ["helm", "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for v in values:
        cmd += ["--values", str(v)]
    return subprocess.run(cmd + list(extra), capture_output=True, text=True)


def load_values(files: list[Path]) -> dict:
    """Chart defaults with the files layered over them (enough for the assertions below)."""
    def merge(base, over):
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(base.get(k), dict):
                merge(base[k], v)
            else:
                base[k] = v
        return base
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for f in files:
        merge(values, yaml.safe_load(f.read_text()) or {})
    return values


def check_names(case: str, doc: dict) -> None:
    meta = doc.get("metadata", {})
    name, kind = meta.get("name", ""), doc.get("kind")
    pattern, limit = (DNS_LABEL, 63) if kind == "Service" else (DNS_SUBDOMAIN, 253)
    if not pattern.match(name) or len(name) > limit:
        error(case, f"{kind} name {name!r} is not a valid Kubernetes name")
    if kind == "StatefulSet" and len(name) + len("-0") > 63:
        error(case, f"StatefulSet {name!r}: the pod name {name}-0 would exceed 63 characters")
    label_sets = [meta.get("labels") or {}]
    tpl = doc.get("spec", {}).get("template", {}).get("metadata", {})
    label_sets.append(tpl.get("labels") or {})
    for claim in doc.get("spec", {}).get("volumeClaimTemplates", []) or []:
        label_sets.append(claim.get("metadata", {}).get("labels") or {})
    for labels in label_sets:
        for key, value in labels.items():
            prefix, _, short = key.rpartition("/")
            if (prefix and not DNS_SUBDOMAIN.match(prefix)) or not LABEL_NAME.match(short) or len(short) > 63:
                error(case, f"{kind} {name}: invalid label key {key!r}")
            if not isinstance(value, str) or not LABEL_VALUE.match(value) or len(value) > 63:
                error(case, f"{kind} {name}: invalid value {value!r} of label {key}")


def validate_schema(case: str, doc: dict) -> None:
    before = len(errors)
    kind, api = doc.get("kind"), doc.get("apiVersion")
    crd = CRD_SCHEMAS.get((api, kind))
    if crd is not None:
        for e in jsonschema.Draft202012Validator(crd).iter_errors(doc):
            path = ".".join(str(p) for p in e.absolute_path)
            error(case, f"{kind}/{doc['metadata'].get('name')}: {path}: {e.message}")
        if len(errors) == before:
            print(f"ok   {case}: {kind}/{doc['metadata']['name']} (the chart's {api} schema)")
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            error(case, f"{kind}/{doc['metadata'].get('name')} against {e.version}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            error(case, f"no schema to validate against: {e.message}")
    if len(errors) == before:
        print(f"ok   {case}: {kind}/{doc['metadata']['name']} (Kubernetes {', '.join(KUBERNETES_VERSIONS)}, strict)")


def check_case(case: str, files: list[Path]) -> None:
    result = helm_template(files)
    if result.returncode != 0:
        error(case, f"helm template failed:\n{result.stderr}")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{case}.yaml").write_text(result.stdout)
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    values = load_values(files)
    for doc in docs:
        validate_schema(case, doc)
        check_names(case, doc)
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)

    if "Secret" in by_kind:
        error(case, "the chart rendered a Secret; secrets must only be referenced (existingSecret)")
    expect = {"StatefulSet": 1, "ConfigMap": 1, "Service": 2,
              "ServiceMonitor": 1 if values["serviceMonitor"]["enabled"] else 0,
              "NetworkPolicy": 1 if values["networkPolicy"]["enabled"] else 0,
              "ServiceAccount": 1 if values["serviceAccount"]["create"] else 0}
    for kind, n in expect.items():
        if len(by_kind.get(kind, [])) != n:
            error(case, f"expected {n} {kind}, rendered {len(by_kind.get(kind, []))}")
    config = check_config(case, by_kind["ConfigMap"][0], values)
    check_statefulset(case, by_kind["StatefulSet"][0], values, config)
    services = {s["spec"].get("clusterIP") == "None": s for s in by_kind["Service"]}
    client_ports = {p["name"]: (p["port"], p["targetPort"]) for p in services[False]["spec"]["ports"]}
    want = {"grpc": (values["service"]["grpcPort"], "grpc"), "metrics": (values["service"]["metricsPort"], "metrics")}
    if client_ports != want:
        error(case, f"Service ports {client_ports}, expected {want}")
    if True not in services:
        error(case, "no headless Service")


def check_config(case: str, configmap: dict, values: dict) -> dict:
    before = len(errors)
    text = configmap["data"]["config.toml"]
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        error(case, f"config.toml is not TOML: {e}\n{text}")
        return {}
    want = {
        ("listen",): "0.0.0.0:50051",
        ("data_dir",): "/data",
        ("metrics", "listen"): "0.0.0.0:9090",
        ("log", "format"): values["log"]["format"],
        ("storage", "cache_capacity_mb"): values["storage"]["cacheCapacityMb"],
        ("storage", "min_free_mb"): values["storage"]["minFreeMb"],
        ("changes", "retention_secs"): values["changes"]["retentionSeconds"],
        ("idempotency", "retention_secs"): values["idempotency"]["retentionSeconds"],
        ("audit", "rotate_mb"): values["audit"]["rotateMb"],
        ("audit", "keep_files"): values["audit"]["keepFiles"],
        ("consent", "default_grant_months"): values["consent"]["defaultGrantMonths"],
        ("consent", "max_grant_months"): values["consent"]["maxGrantMonths"],
        ("contact", "dedup_window_days"): values["contact"]["dedupWindowDays"],
        ("contact", "caps"): [{"window_hours": c["windowHours"], "max": c["max"]} for c in values["contact"]["caps"]],
        ("contact", "marketing_types"): values["contact"]["marketingTypes"],
        ("summary", "moment_types"): values["summary"]["momentTypes"],
        ("summary", "engagement_half_life_days"): values["summary"]["engagementHalfLifeDays"],
    }
    if "shutdown" not in values["config"]:
        want[("shutdown", "grace_secs")] = values["shutdown"]["graceSeconds"]
    tls, enc = values["tls"], values["encryption"]
    if tls["existingSecret"]:
        want[("tls", "cert_file")] = "/etc/customer-profile/tls/tls.crt"
        want[("tls", "key_file")] = "/etc/customer-profile/tls/tls.key"
        want[("health", "listen")] = f"0.0.0.0:{tls['healthPort']}"
        if tls["clientCa"]:
            want[("tls", "client_ca_file")] = "/etc/customer-profile/tls/ca.crt"
    elif "tls" in config or "health" in config:
        error(case, "config.toml has [tls]/[health] without tls.existingSecret")
    if enc["existingSecret"]:
        want[("encryption", "master_key_file")] = f"/etc/customer-profile/encryption/{enc['secretKey']}"
    elif "encryption" in config:
        error(case, "config.toml has [encryption] without encryption.existingSecret")

    def leaves(tree: dict, prefix=()):
        for k, v in tree.items():
            if isinstance(v, dict):
                yield from leaves(v, prefix + (k,))
            else:
                yield prefix + (k,), v
    # The free-form config must come through (it is merged last, over the typed values).
    want.update(dict(leaves(values["config"])))
    for path, expected in want.items():
        node = config
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node != expected or type(node) is float and type(expected) is int:
            error(case, f"config.toml {'.'.join(path)} = {node!r}, expected {expected!r}")
    # Integers must stay integers: the service's integer settings refuse 20.0.
    for path, v in leaves(config):
        if isinstance(v, float) and v.is_integer():
            error(case, f"config.toml {'.'.join(path)} = {v!r} is written as a float")
    if len(errors) == before:
        print(f"ok   {case}: config.toml parses and holds the values")
    return config


def check_statefulset(case: str, sts: dict, values: dict, config: dict) -> None:
    before = len(errors)
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    name = sts["metadata"]["name"]
    if spec["replicas"] != values["replicas"] or spec["replicas"] > 1:
        error(case, f"replicas {spec['replicas']}")
    [container] = pod["containers"]
    tls_on = bool(values["tls"]["existingSecret"])
    probe_port = values["tls"]["healthPort"] if tls_on else 50051
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        p = container.get(probe, {})
        if p.get("grpc", {}).get("port") != probe_port:
            error(case, f"{probe} is not a gRPC probe on port {probe_port}: {p}")
    if container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] < 60:
        error(case, "the startup probe allows less than a minute")
    grace = config.get("shutdown", {}).get("grace_secs")
    tgps = pod.get("terminationGracePeriodSeconds")
    wanted = values["terminationGracePeriodSeconds"] or (grace or 0) + 10
    if not isinstance(grace, int) or tgps != wanted or tgps <= grace:
        error(case, f"terminationGracePeriodSeconds {tgps} vs shutdown grace {grace} (expected {wanted})")
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    for k, v in {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001}.items():
        if psc.get(k) != v:
            error(case, f"pod securityContext.{k} = {psc.get(k)!r}, expected {v!r}")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        error(case, "pod seccompProfile is not RuntimeDefault")
    for k, v in {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                 "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}.items():
        if csc.get(k) != v:
            error(case, f"container securityContext.{k} = {csc.get(k)!r}, expected {v!r}")
    if pod.get("enableServiceLinks") is not False or pod.get("automountServiceAccountToken") is not False:
        error(case, "enableServiceLinks and automountServiceAccountToken must be false")
    if not container.get("resources") and values["resources"]:
        error(case, "resources missing")

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    args = container["args"]
    want_args = ["serve", "--config", "/etc/customer-profile/config.toml"]
    auth = values["auth"]
    if auth["enabled"]:
        want_args += ["--config", f"/etc/customer-profile/auth/{auth['secretKey']}"]
    if args != want_args:
        error(case, f"args {args}, expected {want_args}")
    secrets = {"auth": auth["existingSecret"] if auth["enabled"] else "",
               "tls": values["tls"]["existingSecret"],
               "encryption": values["encryption"]["existingSecret"]}
    for vol, secret in secrets.items():
        got = volumes.get(vol, {}).get("secret", {}).get("secretName", "")
        if got != secret:
            error(case, f"volume {vol} refers to Secret {got!r}, expected {secret!r}")
        if bool(secret) != (mounts.get(vol) == f"/etc/customer-profile/{vol}"):
            error(case, f"mount of the {vol} Secret: {mounts.get(vol)!r}")
    if mounts.get("data") != "/data" or mounts.get("config") != "/etc/customer-profile/config.toml":
        error(case, f"data/config mounts: {mounts}")
    claims = spec.get("volumeClaimTemplates") or []
    if values["persistence"]["enabled"]:
        if [c["metadata"]["name"] for c in claims] != ["data"] or "data" in volumes:
            error(case, "expected one volumeClaimTemplate 'data' (and no pod volume of that name)")
        elif claims[0]["spec"]["resources"]["requests"]["storage"] != values["persistence"]["size"]:
            error(case, "the volume claim does not request persistence.size")
    elif claims or "emptyDir" not in volumes.get("data", {}):
        error(case, "persistence.enabled=false must give an emptyDir and no claim")
    checksum = sts["spec"]["template"]["metadata"].get("annotations", {}).get("checksum/config", "")
    if not re.fullmatch(r"[0-9a-f]{64}", checksum):
        error(case, "no checksum/config annotation on the pod template")
    if len(errors) == before:
        print(f"ok   {case}: StatefulSet {name}: gRPC probes, security context, volumes, secret references")


# Values that must be refused, and a part of the message that says why.
REFUSED = [
    ("no auth secret", [], "auth.existingSecret is required"),
    ("auth off without principals", ["--set", "auth.enabled=false"], "config.auth.principals is empty"),
    ("two replicas", ["--set", "auth.existingSecret=a", "--set", "replicas=2"], "replicas"),
    ("termination grace not above the drain grace",
     ["--set", "auth.existingSecret=a", "--set", "terminationGracePeriodSeconds=20"],
     "must be above the shutdown grace"),
    ("grace raised through config",
     ["--set", "auth.existingSecret=a", "--set", "config.shutdown.grace_secs=120",
      "--set", "terminationGracePeriodSeconds=60"], "must be above the shutdown grace (120 s)"),
    ("chart-owned key in config", ["--set", "auth.existingSecret=a", "--set", "config.data_dir=/x"],
     "config.data_dir is set by the chart"),
    ("chart-owned metrics.listen in config",
     ["--set", "auth.existingSecret=a", "--set", "config.metrics.listen=0.0.0.0:1"],
     "config.metrics.listen is set by the chart"),
    ("unknown value", ["--set", "auth.existingSecret=a", "--set", "replicaCount=3"], "replicaCount"),
    ("root user", ["--set", "auth.existingSecret=a", "--set", "podSecurityContext.runAsNonRoot=false"],
     "runAsNonRoot"),
]


def check_refusals() -> None:
    for what, args, message in REFUSED:
        result = helm_template([], args)
        if result.returncode == 0:
            error("refused", f"{what}: rendered, but must fail")
        elif message not in result.stderr:
            error("refused", f"{what}: failed without saying {message!r}:\n{result.stderr}")
        else:
            print(f"ok   refused: {what}")


def main() -> int:
    cases = {
        "default": [CI / "default-values.yaml"],
        "all-features": [CI / "all-features-values.yaml"],
        "minimal": [CI / "minimal-values.yaml"],
    }
    for case, files in cases.items():
        check_case(case, files)
    check_refusals()
    if errors:
        print(f"\n{len(errors)} error(s) in the Helm chart checks", file=sys.stderr)
        return 1
    print(f"\nHelm chart: {len(cases)} value sets rendered and valid; rendered manifests in {OUT}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
