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

# The rendered nats-server configurations, parsed by a real nats-server (-t: test and exit).
nats_bin="${NATS_SERVER_BIN:-$(command -v nats-server || true)}"
if [ -n "$nats_bin" ] && [ -x "$nats_bin" ]; then
  "$PY" - "$OUT" "${rendered[@]}" <<'PY'
import os, sys, yaml
out = sys.argv[1]
for path in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(path)):
        if doc and doc.get("kind") == "ConfigMap" and "nats.conf" in (doc.get("data") or {}):
            with open(os.path.join(out, os.path.basename(path)[:-5] + ".nats.conf"), "w") as f:
                f.write(doc["data"]["nats.conf"])
PY
  n=0
  for conf in "$OUT"/*.nats.conf; do
    [ -e "$conf" ] || continue
    POD_NAME=aicp-nats-0 "$nats_bin" -t -c "$conf" >/dev/null 2>"$OUT/nats-t.err" \
      || { echo "chart-check: nats-server rejects $conf:" >&2; cat "$OUT/nats-t.err" >&2; exit 1; }
    n=$((n + 1))
  done
  echo "nats-server -t ($("$nats_bin" --version)): $n rendered configurations valid"
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
