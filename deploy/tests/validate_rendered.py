"""Run `kubernetes-validate --strict -k VERSION FILE` on a rendered chart and make it strict
about coverage too: every built-in object must be validated (a WARN "schema not found" is a
failure unless the object is one of the CRD kinds below, whose schemas kubernetes-validate
does not ship), and the number of validated objects must match the objects in the file.

usage: validate_rendered.py KUBERNETES_VALIDATE VERSION RENDERED.yaml
"""
import subprocess
import sys

import yaml

CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("karpenter.sh/v1", "NodePool")}


def main() -> int:
    kv, version, path = sys.argv[1:4]
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    builtin = [d for d in docs if (d["apiVersion"], d["kind"]) not in CRD_KINDS]
    crds = len(docs) - len(builtin)
    proc = subprocess.run([kv, "--strict", "-k", version, path], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    print(out, end="")
    passed = [line for line in out.splitlines() if line.startswith("INFO") and " passed " in line]
    warns = [line for line in out.splitlines() if line.startswith("WARN")]
    ok = proc.returncode == 0
    if len(passed) != len(builtin):
        print(f"expected {len(builtin)} built-in objects validated, got {len(passed)}")
        ok = False
    if len(warns) != crds:
        print(f"expected {crds} schema-less CRD objects, got {len(warns)} warnings")
        ok = False
    print(f"{path}: {len(passed)} objects valid against Kubernetes {version} (strict), "
          f"{crds} CRD objects without a schema")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
