#!/usr/bin/env bash
# Offline checks of the Helm chart (make chart-check): helm lint --strict, helm template for
# each values file in charts/aicp/ci/, every rendered object validated (Kubernetes schemas,
# KEDA's CRDs, cross-object rules: ops/scripts/chart-validate.py), broken renders that must
# be caught (the validator's self-test), and values the chart must refuse. Fails on the
# first problem. Needs the tools of ops/scripts/chart-tools.sh (make chart-tools).
set -euo pipefail
cd "$(dirname "$0")/../.."

TOOLS="${CHART_TOOLS_DIR:-target/chart-tools}"
HELM="$TOOLS/bin/helm"
PY="$TOOLS/venv/bin/python"
CHART=charts/aicp
OUT=target/chart-check
KUBE_VERSION="${KUBE_VERSION:-1.30.0}"
NAMESPACE=aicp-ci
[ -x "$HELM" ] && [ -x "$PY" ] || { echo "chart-check: tools missing: run make chart-tools" >&2; exit 1; }

rm -rf "$OUT" && mkdir -p "$OUT"
values=("$CHART"/ci/*-values.yaml)
[ -e "${values[0]}" ] || { echo "chart-check: no $CHART/ci/*-values.yaml" >&2; exit 1; }

echo "helm lint --strict ($("$HELM" version --short)), with the defaults and each of ${#values[@]} ci values files"
"$HELM" lint --strict --quiet "$CHART" >/dev/null || { "$HELM" lint --strict "$CHART"; exit 1; }
for f in "${values[@]}"; do
  "$HELM" lint --strict --quiet "$CHART" -f "$f" >/dev/null || { "$HELM" lint --strict "$CHART" -f "$f"; exit 1; }
done

echo "helm template --kube-version $KUBE_VERSION, then validation"
rendered=()
for f in "${values[@]}"; do
  out="$OUT/$(basename "$f" .yaml).yaml"
  "$HELM" template aicp "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" -f "$f" >"$out"
  rendered+=("$out")
done
"$PY" ops/scripts/chart-validate.py --kubernetes-version "$KUBE_VERSION" \
  --keda-crds "$CHART/tests/schemas/keda" \
  --self-test "$OUT/default-values.yaml" \
  --self-test "$OUT/pools-ingress-monitoring-values.yaml" \
  --self-test "$OUT/external-nats-hpa-values.yaml" \
  "${rendered[@]}"

# The rendered nats-server configurations, parsed by a real nats-server (-t: test and exit)
# with the environment of the NATS container (the configuration reads the users' and the
# routes' passwords from it): pod 0's name, the rendered Secret's values (a dummy of letters
# for a Secret the render does not hold) and $(VAR) composed as the kubelet does.
nats_bin="${NATS_SERVER_BIN:-$(command -v nats-server || true)}"
if [ -n "$nats_bin" ] && [ -x "$nats_bin" ]; then
  "$PY" - "$OUT" "${rendered[@]}" <<'PY'
import base64, os, re, sys, yaml
out = sys.argv[1]
for path in sys.argv[2:]:
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    secrets = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d.get("kind") == "Secret"}
    for doc in docs:
        if doc.get("kind") != "ConfigMap" or "nats.conf" not in (doc.get("data") or {}):
            continue
        base = os.path.join(out, os.path.basename(path)[:-5])
        with open(base + ".nats.conf", "w") as f:
            f.write(doc["data"]["nats.conf"])
        servers = [d for d in docs if d.get("kind") == "StatefulSet"
                   and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "nats"]
        if len(servers) != 1:
            sys.exit(f"chart-check: {path}: a NATS ConfigMap and {len(servers)} NATS StatefulSets")
        env = {}
        for entry in servers[0]["spec"]["template"]["spec"]["containers"][0].get("env") or []:
            source = entry.get("valueFrom") or {}
            if "value" in entry:
                value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                               lambda m: env.get(m.group(1), m.group(0)), str(entry["value"]))
            elif (source.get("fieldRef") or {}).get("fieldPath") == "metadata.name":
                value = servers[0]["metadata"]["name"] + "-0"
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                data = secrets.get(ref["name"], {})
                value = (base64.b64decode(data[ref["key"]]).decode() if ref["key"] in data
                         else "chartcheck" + re.sub(r"[^A-Za-z]", "", ref["key"]))
            else:
                sys.exit(f"chart-check: {path}: NATS env {entry.get('name')}: unknown source {source}")
            env[entry["name"]] = value
        with open(base + ".nats.env", "w") as f:
            f.writelines(f"{k}={v}\n" for k, v in env.items())
PY
  n=0
  for conf in "$OUT"/*.nats.conf; do
    [ -e "$conf" ] || continue
    mapfile -t nats_env <"${conf%.conf}.env"
    env "${nats_env[@]}" "$nats_bin" -t -c "$conf" >/dev/null 2>"$OUT/nats-t.err" \
      || { echo "chart-check: nats-server rejects $conf (environment: ${conf%.conf}.env):" >&2; cat "$OUT/nats-t.err" >&2; exit 1; }
    n=$((n + 1))
  done
  echo "nats-server -t ($("$nats_bin" --version)): $n rendered configurations valid in their containers' environment"
else
  echo "nats-server -t: skipped (no nats-server on the PATH nor NATS_SERVER_BIN; make tools installs one)"
fi

# Values the chart must refuse (values.schema.json or a template's fail): each must make
# `helm template` fail, with the expected words in its error.
echo "values the chart refuses"
refused=0
refuse() {
  local expect="$1"; shift
  local err
  if err="$("$HELM" template aicp "$CHART" --namespace "$NAMESPACE" "$@" 2>&1 >/dev/null)"; then
    echo "chart-check: accepted but must be refused: $*" >&2; exit 1
  fi
  grep -qiF -- "$expect" <<<"$err" || { echo "chart-check: refused for another reason than '$expect': $*: $err" >&2; exit 1; }
  refused=$((refused + 1))
}
refuse "workers.autoscaling.mode" --set workers.autoscaling.mode=sometimes
refuse "replica" --set coordinator.replica=3                       # a misspelt key
refuse "prefix" --set prefix=bad.prefix                            # a dot would change the subjects
refuse "scaleAgents" --set 'workers.all.scaleAgents={agent 1}'     # not a subject token
refuse "nats.external.url" --set nats.enabled=false
refuse "monitoringEndpoint" --set nats.enabled=false --set nats.external.url=nats://nats:4222
refuse "url" --set nats.enabled=false --set nats.external.url=nats://user:pass@nats:4222   # credentials belong in the Secret
printf 'workers:\n  all:\n    scaleAgents: []\n' >"$OUT/no-scale-agents.yaml"
refuse "needs agents to scale on" -f "$OUT/no-scale-agents.yaml"
refuse "used twice" --set 'workers.pools[0].name=a' --set 'workers.pools[0].agents={x}' --set 'workers.pools[1].name=a' --set 'workers.pools[1].agents={y}'
refuse "name" --set 'workers.pools[0].name=all' --set 'workers.pools[0].agents={x}'
refuse "executor" --set workers.executor=exec
refuse "replicas" --set streams.replicas=7
refuse "bundled NATS server" --set streams.replicas=3             # 3 replicas on 1 server
refuse "minReplicas >= 1" --set workers.autoscaling.mode=hpa --set workers.autoscaling.minReplicas=0
refuse "maxFileStore" --set nats.jetstream.maxFileStore=8Gi          # nats-server wants 8GB
refuse "tokenSecret" --set 'workers.pools[0].name=a' --set 'workers.pools[0].agents={x}' --set 'workers.pools[0].tokenSecret.name=s'   # no key
refuse "tokenSecret" --set 'workers.pools[0].name=a' --set 'workers.pools[0].agents={x}' --set 'workers.pools[0].tokenSecret.key=k'    # no name
refuse "perPrincipal" --set-string coordinator.rateLimit.perPrincipal=0/s
echo "  $refused refused as expected"
echo "chart-check: ok"
