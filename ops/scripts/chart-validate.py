#!/usr/bin/env python3
"""Validates the output of `helm template` for the AICP chart, offline.

  chart-validate.py --kubernetes-version 1.30.0 --keda-crds charts/aicp/tests/schemas/keda RENDERED.yaml...

Each object is checked against a schema, and an object with no schema is an error, never a
silent pass:
  - Kubernetes kinds: kubernetes-validate's strict schemas for that version (unknown fields
    are errors);
  - ScaledObject / TriggerAuthentication: the openAPIV3Schema of KEDA's CRDs, made strict
    the way the API server's strict field validation is (unknown fields are errors), plus
    the nats-jetstream trigger's metadata (KEDA types it as a map of strings);
  - ServiceMonitor: a minimal schema of the fields the chart uses (no CRD is vendored).
Then what schemas cannot see, across objects:
  - every selector (workload, Service, PDB, ServiceMonitor) selects pods or Services of the
    release, and autoscalers target a Deployment that leaves spec.replicas to them;
  - every KEDA consumer is one the provisioning Job creates, on the work stream of the
    release's prefix, and the Job's --replicas equals AICP_STREAM_REPLICAS everywhere;
  - $(VAR) references in env are defined before use; probes name container ports;
  - every pod meets the "restricted" Pod Security Standard (non-root, no privilege
    escalation, all capabilities dropped, RuntimeDefault seccomp) with a read-only root.
Exit code 0 when everything passes, 1 otherwise.
"""

import argparse
import copy
import os
import re
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv

errors = []
VERBOSE = False


def error(where, message):
    errors.append(f"{where}: {message}")


def name_of(doc):
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


# ---------- KEDA: the CRDs' schemas, strict ----------

def strict(schema):
    """Unknown properties become errors, as with the API server's strict field validation."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (node.get("type") == "object" and "properties" in node
                    and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def load_crds(directory):
    """{(apiVersion, kind): validator} from CRD files."""
    validators = {}
    for file in sorted(os.listdir(directory)):
        if not file.endswith((".yaml", ".yml")):
            continue
        with open(os.path.join(directory, file)) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    if not version.get("served"):
                        continue
                    schema = strict(version["schema"]["openAPIV3Schema"])
                    # The API server fills these; a manifest must name them.
                    schema.setdefault("required", [])
                    schema["required"] = sorted(set(schema["required"]) | {"apiVersion", "kind", "metadata", "spec"})
                    jsonschema.Draft7Validator.check_schema(schema)
                    validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    if not validators:
        sys.exit(f"chart-validate: no CustomResourceDefinition in {directory}")
    return validators


# The nats-jetstream scaler's metadata (KEDA pkg/scalers/nats_jetstream_scaler.go).
NATS_JETSTREAM_REQUIRED = {"natsServerMonitoringEndpoint", "account", "stream", "consumer"}
NATS_JETSTREAM_KNOWN = NATS_JETSTREAM_REQUIRED | {"lagThreshold", "activationLagThreshold", "useHttps"}


def check_trigger(where, trigger):
    if trigger.get("type") != "nats-jetstream":
        error(where, f"trigger type {trigger.get('type')!r}: the chart only makes nats-jetstream triggers")
        return
    meta = trigger.get("metadata") or {}
    for key in sorted(NATS_JETSTREAM_REQUIRED - meta.keys()):
        if not (key in ("natsServerMonitoringEndpoint", "account") and trigger.get("authenticationRef")):
            error(where, f"nats-jetstream metadata lacks {key}")
    for key in sorted(meta.keys() - NATS_JETSTREAM_KNOWN):
        error(where, f"nats-jetstream metadata has unknown key {key!r} (known: {', '.join(sorted(NATS_JETSTREAM_KNOWN))})")
    for key in ("lagThreshold", "activationLagThreshold"):
        if key in meta and not re.fullmatch(r"[0-9]+", str(meta[key])):
            error(where, f"{key} {meta[key]!r} is not a non-negative integer")
    if "useHttps" in meta and str(meta["useHttps"]).lower() not in ("true", "false", "1", "0"):
        error(where, f"useHttps {meta['useHttps']!r} is not a boolean")
    endpoint = meta.get("natsServerMonitoringEndpoint")
    if endpoint is not None and not re.fullmatch(r"[A-Za-z0-9.-]+:[0-9]{1,5}", endpoint):
        error(where, f"natsServerMonitoringEndpoint {endpoint!r} is not host:port (no scheme: useHttps picks it)")


def check_scaling_modifiers(where, spec):
    """A formula combines triggers by name: it must use every trigger, and only triggers."""
    modifiers = (spec.get("advanced") or {}).get("scalingModifiers")
    if not modifiers:
        return
    names = [t.get("name") for t in spec.get("triggers") or []]
    if None in names or len(set(names)) != len(names):
        error(where, f"scalingModifiers needs every trigger named, uniquely: {names}")
    used = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", modifiers.get("formula", "")))
    for name in sorted(used - set(names)):
        error(where, f"scalingModifiers.formula uses {name!r}, which is no trigger's name")
    for name in sorted(set(n for n in names if n) - used):
        error(where, f"trigger {name!r} is left out of scalingModifiers.formula")
    for key in ("target", "activationTarget"):
        if key in modifiers and not re.fullmatch(r"[0-9]+(\.[0-9]+)?", str(modifiers[key])):
            error(where, f"scalingModifiers.{key} {modifiers[key]!r} is not a number")
    if "target" not in modifiers:
        error(where, "scalingModifiers without a target")


# ---------- ServiceMonitor: the fields the chart uses ----------

DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "jobLabel": {"type": "string"},
                "endpoints": {
                    "type": "array", "minItems": 1,
                    "items": {"type": "object", "additionalProperties": False,
                              "properties": {"port": {"type": "string"}, "targetPort": {}, "path": {"type": "string", "pattern": "^/"},
                                             "scheme": {"enum": ["http", "https"]}, "interval": DURATION, "scrapeTimeout": DURATION,
                                             "honorLabels": {"type": "boolean"}},
                              "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}]},
                },
            },
        },
    },
}


# ---------- helpers ----------

def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_spec(doc):
    kind = doc.get("kind")
    if kind == "Pod":
        return doc.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    return None


def pod_labels(doc):
    if doc.get("kind") == "Pod":
        return (doc.get("metadata") or {}).get("labels") or {}
    return (((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def env_value(container, name):
    for entry in container.get("env") or []:
        if entry.get("name") == name:
            return entry.get("value")
    return None


def check_pod_security(where, spec):
    pod_sc = spec.get("securityContext") or {}
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        sc = c.get("securityContext") or {}
        cw = f"{where} container {c.get('name')}"
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
            error(cw, "runAsNonRoot is not true")
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        if uid == 0:
            error(cw, "runs as uid 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            error(cw, "allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            error(cw, "privileged")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            error(cw, "capabilities do not drop ALL")
        if ((sc.get("capabilities") or {}).get("add") or []):
            error(cw, "adds capabilities")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            error(cw, f"seccompProfile is {seccomp!r}, not RuntimeDefault")
        if sc.get("readOnlyRootFilesystem") is not True:
            error(cw, "readOnlyRootFilesystem is not true")


def check_env_refs(where, container):
    defined = set()
    for entry in container.get("env") or []:
        for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(entry.get("value") or "")):
            if ref not in defined:
                error(f"{where} container {container.get('name')}", f"env {entry.get('name')} uses $({ref}) before it is defined")
        defined.add(entry.get("name"))


def check_probe_ports(where, container):
    names = {p.get("name") for p in container.get("ports") or [] if p.get("name")}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        port = (((container.get(probe) or {}).get("httpGet")) or {}).get("port")
        if isinstance(port, str) and port not in names:
            error(f"{where} container {container.get('name')}", f"{probe} uses port {port!r}, not a port of the container")


# ---------- main ----------

def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def validate_docs(path, docs, k8s_version, crds):
    if not docs:
        error(path, "renders no object")
        return {}
    counts = {"kubernetes": 0, "keda": 0, "servicemonitor": 0}
    for doc in docs:
        where = f"{os.path.basename(path)} {name_of(doc)}"
        kind, api = doc.get("kind"), doc.get("apiVersion")
        if (api, kind) in crds:
            for e in sorted(crds[(api, kind)].iter_errors(doc), key=lambda e: list(e.path)):
                error(where, f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message} (KEDA CRD schema)")
            for n, trigger in enumerate(((doc.get("spec") or {}).get("triggers")) or []):
                check_trigger(f"{where} trigger {n}", trigger)
            if kind == "ScaledObject":
                check_scaling_modifiers(where, doc.get("spec") or {})
            counts["keda"] += 1
        elif kind == "ServiceMonitor":
            for e in jsonschema.Draft7Validator(SERVICE_MONITOR).iter_errors(doc):
                error(where, f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message} (ServiceMonitor schema)")
            counts["servicemonitor"] += 1
        elif api and api.startswith("keda.sh/"):
            error(where, f"no KEDA CRD schema for {api} {kind}")
        else:
            try:
                kv.validate(doc, k8s_version, strict=True)
                counts["kubernetes"] += 1
            except kv.ValidationError as e:
                error(where, f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message} (Kubernetes {e.version}, strict)")
            except kv.SchemaNotFoundError as e:
                error(where, f"no schema: {e.message}")

    # Across objects.
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc.get("kind"), []).append(doc)
    pods = [d for d in docs if pod_spec(d) is not None]
    services = by_kind.get("Service", [])
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    short = os.path.basename(path)

    for doc in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", []):
        selector = ((doc["spec"].get("selector") or {}).get("matchLabels")) or {}
        if not matches(selector, pod_labels(doc)):
            error(f"{short} {name_of(doc)}", "spec.selector does not match the pod template's labels")
    for doc in services:
        selector = doc["spec"].get("selector") or {}
        if selector and not any(matches(selector, pod_labels(p)) for p in pods if p.get("kind") != "Pod"):
            error(f"{short} {name_of(doc)}", f"selector {selector} selects no pod of the release")
    for doc in by_kind.get("StatefulSet", []):
        if not any(s["metadata"]["name"] == doc["spec"].get("serviceName") for s in services):
            error(f"{short} {name_of(doc)}", f"serviceName {doc['spec'].get('serviceName')!r} is not a Service of the release")
    for doc in by_kind.get("PodDisruptionBudget", []):
        selector = ((doc["spec"].get("selector") or {}).get("matchLabels")) or {}
        if not any(matches(selector, pod_labels(p)) for p in pods if p.get("kind") != "Pod"):
            error(f"{short} {name_of(doc)}", "selects no pod of the release")
    for doc in by_kind.get("ServiceMonitor", []):
        selector = ((doc.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        chosen = [s for s in services if matches(selector, (s.get("metadata") or {}).get("labels") or {})]
        if len(chosen) != 1:
            error(f"{short} {name_of(doc)}", f"selects {len(chosen)} Services, expected exactly 1")
        for ep in (doc.get("spec") or {}).get("endpoints") or []:
            for svc in chosen:
                if ep.get("port") and ep["port"] not in {p.get("name") for p in svc["spec"].get("ports") or []}:
                    error(f"{short} {name_of(doc)}", f"endpoint port {ep['port']!r} is not a port of {name_of(svc)}")
    for doc in by_kind.get("Ingress", []):
        for rule in doc["spec"].get("rules") or []:
            for p in (rule.get("http") or {}).get("paths") or []:
                svc = ((p.get("backend") or {}).get("service") or {}).get("name")
                if not any(s["metadata"]["name"] == svc for s in services):
                    error(f"{short} {name_of(doc)}", f"backend Service {svc!r} is not in the release")

    scaled = set()
    for doc in by_kind.get("ScaledObject", []) + by_kind.get("HorizontalPodAutoscaler", []):
        target = (doc.get("spec") or {}).get("scaleTargetRef") or {}
        if target.get("kind", "Deployment") != "Deployment" or target.get("name") not in deployments:
            error(f"{short} {name_of(doc)}", f"scaleTargetRef {target} is not a Deployment of the release")
            continue
        if target["name"] in scaled:
            error(f"{short} {name_of(doc)}", f"Deployment {target['name']} has two autoscalers")
        scaled.add(target["name"])
        if "replicas" in deployments[target["name"]]["spec"]:
            error(f"{short} Deployment/{target['name']}", "sets spec.replicas although an autoscaler owns them (an upgrade would reset them)")

    # The provisioning Job against the workloads and KEDA.
    jobs = [j for j in by_kind.get("Job", []) if (j["spec"]["template"]["spec"]["containers"][0].get("args") or [])[:2] == ["streams", "init"]]
    prefix_values = set()
    replicas_values = {}
    for p in pods:
        for c in pod_spec(p).get("containers") or []:
            w = f"{short} {name_of(p)}"
            check_env_refs(w, c)
            check_probe_ports(w, c)
            if env_value(c, "AICP_PREFIX") is not None:
                prefix_values.add(env_value(c, "AICP_PREFIX"))
            if env_value(c, "AICP_STREAM_REPLICAS") is not None:
                replicas_values[w] = env_value(c, "AICP_STREAM_REPLICAS")
        check_pod_security(f"{short} {name_of(p)}", pod_spec(p))
    if len(prefix_values) > 1:
        error(short, f"the pods disagree on AICP_PREFIX: {sorted(prefix_values)}")
    prefix = next(iter(prefix_values), "")
    work_stream = f"{prefix}_AICP_WORK" if prefix else "AICP_WORK"
    provisioned = None
    if len(jobs) > 1:
        error(short, "more than one `aicp streams init` Job")
    if jobs:
        args = jobs[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        job_replicas = args[args.index("--replicas") + 1] if "--replicas" in args else "1"
        for w, value in replicas_values.items():
            if value != job_replicas:
                error(w, f"AICP_STREAM_REPLICAS={value} but the Job runs streams init --replicas {job_replicas}")
        provisioned = set(args[args.index("--agents") + 1].split(",")) if "--agents" in args else set()
    for doc in by_kind.get("ScaledObject", []):
        for trigger in (doc.get("spec") or {}).get("triggers") or []:
            meta = trigger.get("metadata") or {}
            w = f"{short} {name_of(doc)}"
            if meta.get("stream") != work_stream:
                error(w, f"trigger stream {meta.get('stream')!r}, but the work stream of prefix {prefix!r} is {work_stream}")
            consumer = meta.get("consumer", "")
            if not consumer.startswith("worker-"):
                error(w, f"trigger consumer {consumer!r} is not a worker consumer (worker-<agent>)")
            elif provisioned is None:
                error(w, "no provisioning Job: KEDA would scale to the maximum until a worker creates the consumer")
            elif consumer[len("worker-"):] not in provisioned:
                error(w, f"consumer {consumer} is not created by the provisioning Job (--agents {','.join(sorted(provisioned))}): KEDA would scale to the maximum")
    return {"objects": len(docs), **counts}


# ---------- self-test: each check must fail on a broken render ----------

def find(docs, kind, name_part=""):
    for d in docs:
        if d.get("kind") == kind and name_part in d["metadata"]["name"]:
            return d
    raise LookupError(f"no {kind} {name_part!r} in the render")


def container(docs, kind, name_part=""):
    return pod_spec(find(docs, kind, name_part))["containers"][0]


def env_entry(c, name):
    return next(e for e in c["env"] if e["name"] == name)


def set_args(job, old, new):
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    args[args.index(old) + 1] = new


MUTATIONS = [
    ("unknown nats-jetstream metadata key",
     lambda d: find(d, "ScaledObject")["spec"]["triggers"][0]["metadata"].update(lagThreshhold="10")),
    ("missing nats-jetstream consumer",
     lambda d: find(d, "ScaledObject")["spec"]["triggers"][0]["metadata"].pop("consumer")),
    ("non-numeric lagThreshold",
     lambda d: find(d, "ScaledObject")["spec"]["triggers"][0]["metadata"].update(lagThreshold="ten")),
    ("misspelt ScaledObject field (KEDA CRD, strict)",
     lambda d: find(d, "ScaledObject")["spec"]["advanced"].update(horizontalPodAutoscalerConfg={})),
    ("string minReplicaCount (KEDA CRD types)",
     lambda d: find(d, "ScaledObject")["spec"].update(minReplicaCount="3")),
    ("ScaledObject without triggers (KEDA CRD required)",
     lambda d: find(d, "ScaledObject")["spec"].pop("triggers")),
    ("a trigger left out of the scaling formula",
     lambda d: find(d, "ScaledObject")["spec"]["advanced"]["scalingModifiers"].update(formula="q0 + q1")),
    ("KEDA consumer the Job does not create",
     lambda d: find(d, "ScaledObject")["spec"]["triggers"][0]["metadata"].update(consumer="worker-agent-9")),
    ("KEDA trigger on the wrong stream",
     lambda d: find(d, "ScaledObject")["spec"]["triggers"][0]["metadata"].update(stream="AICP_EVENTS")),
    ("ScaledObject targeting a missing Deployment",
     lambda d: find(d, "ScaledObject")["spec"]["scaleTargetRef"].update(name="nope")),
    ("misspelt container field (Kubernetes, strict)",
     lambda d: container(d, "Deployment", "coordinator").update(livenessprobe={})),
    ("wrong type in a Deployment (Kubernetes)",
     lambda d: find(d, "Deployment", "coordinator")["spec"].update(replicas="two")),
    ("an apiVersion Kubernetes does not serve",
     lambda d: find(d, "Deployment", "coordinator").update(apiVersion="apps/v1beta1")),
    ("a Service selecting nothing",
     lambda d: find(d, "Service", "coordinator")["spec"]["selector"].update({"app.kubernetes.io/component": "nothing"})),
    ("autoscaled Deployment with spec.replicas",
     lambda d: find(d, "Deployment", "worker")["spec"].update(replicas=3)),
    ("writable root filesystem",
     lambda d: container(d, "Deployment", "worker")["securityContext"].update(readOnlyRootFilesystem=False)),
    ("capabilities not dropped",
     lambda d: container(d, "StatefulSet", "nats")["securityContext"].pop("capabilities")),
    ("$(VAR) used before it is defined",
     lambda d: env_entry(container(d, "Deployment", "coordinator"), "NATS_URL").update(value="nats://$(NATS_UNDEFINED)@x:4222")),
    ("probe on a port the container does not have",
     lambda d: container(d, "Deployment", "coordinator")["readinessProbe"]["httpGet"].update(port="api")),
    ("Job --replicas differing from AICP_STREAM_REPLICAS",
     lambda d: set_args(find(d, "Job", "streams-init"), "--replicas", "5")),
    ("pods disagreeing on the prefix",
     lambda d: env_entry(container(d, "Deployment", "worker"), "AICP_PREFIX").update(value="other")),
    ("ServiceMonitor without endpoints",
     lambda d: find(d, "ServiceMonitor")["spec"].pop("endpoints")),
    ("ServiceMonitor on a port the Service lacks",
     lambda d: find(d, "ServiceMonitor")["spec"]["endpoints"][0].update(port="metrics")),
    ("HPA metric without a target (Kubernetes)",
     lambda d: find(d, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["external"].pop("target")),
]


def self_test(paths, k8s_version, crds):
    """Applies each mutation to the renders it fits and checks that validation fails."""
    global errors
    saved = errors
    applied, missed = set(), []
    for path in paths:
        base = load(path)
        errors = []
        validate_docs(path, copy.deepcopy(base), k8s_version, crds)
        if errors:
            print("\n".join(errors), file=sys.stderr)
            sys.exit(f"chart-validate: self-test base {path} does not validate")
        for title, mutate in MUTATIONS:
            docs = copy.deepcopy(base)
            try:
                mutate(docs)
            except LookupError:
                continue  # this render has no such object
            applied.add(title)
            errors = []
            validate_docs(path, docs, k8s_version, crds)
            if errors:
                if VERBOSE:
                    print(f"  caught in {os.path.basename(path)}: {title}: {errors[0].split(': ', 1)[1]}")
            else:
                missed.append(f"{title} ({os.path.basename(path)})")
    errors = saved
    for title in missed:
        error("self-test", f"a broken render passed: {title}")
    for title, _ in MUTATIONS:
        if title not in applied:
            error("self-test", f"no render to break for: {title}")
    print(f"  self-test: {len(MUTATIONS)} kinds of breakage tried on {len(paths)} renders, {len(missed)} missed")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("--keda-crds", required=True)
    parser.add_argument("--self-test", metavar="RENDERED", action="append", default=[],
                        help="also break this render in known ways (repeatable); each breakage must be caught")
    parser.add_argument("--verbose", action="store_true", help="print what each breakage was caught by")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    crds = load_crds(args.keda_crds)
    for path in args.files:
        before = len(errors)
        counts = validate_docs(path, load(path), args.kubernetes_version, crds)
        status = "ok" if len(errors) == before else f"{len(errors) - before} problem(s)"
        print(f"  {os.path.basename(path)}: {counts.get('objects', 0)} objects ({counts.get('kubernetes', 0)} Kubernetes "
              f"{args.kubernetes_version} strict, {counts.get('keda', 0)} KEDA CRD, {counts.get('servicemonitor', 0)} ServiceMonitor): {status}")
    if args.self_test:
        self_test(args.self_test, args.kubernetes_version, crds)
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
