"""Invariants of the rendered zeptodb chart (run by deploy/check-chart.sh).

usage: test_chart_invariants.py RENDERED_DIR [RECOVERY_GUIDE.md]

RENDERED_DIR holds default.yaml, all-features.yaml, single-node.yaml (`helm template`) and
notes-default-manifest.yaml (the default render plus NOTES.txt rendered into a ConfigMap). The guide's
numbers are read from RECOVERY_GUIDE.md when it is there (CI has ../shared beside the clone)
and compared with the rendered defaults; the same numbers are also pinned below so the test
still says something when the guide is absent.
"""
import base64
import os
import re
import sys
import unittest

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CHART = os.path.join(ROOT, "deploy", "helm", "zeptodb")
RENDERED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".ci-tools", "rendered")
GUIDE = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "..", "shared", "RECOVERY_GUIDE.md")

# The guide's numbers (RECOVERY_GUIDE.md): timeline, scenario 3, 6, 8, 9 and the summary.
GUIDE_NUMBERS = {
    "heartbeat_s": 1,  # "heartbeat 1s"
    "suspect_s": 3,  # "SUSPECT 3s"
    "dead_s": 10,  # "DEAD 10s"
    "readiness_fail_s": 15,  # "t=15s K8s: readinessProbe failed"
    "liveness_restart_s": 30,  # "t=30s K8s: livenessProbe failed"
    "prestop_s": 15,  # "preStop: sleep 15s"
    "pdb_min_available": 2,  # "minAvailable: 2"
    "hpa_min": 3,  # "minReplicas":3
    "hpa_max": 10,  # "scale to 10 replicas"
    "hpa_scale_up_s": 120,  # "stabilizationSeconds: 120"
    "hpa_scale_down_s": 300,  # "stabilizationSeconds: 300"
    "snapshot_interval_s": 60,  # "Auto-Snapshot ─── 60s interval"
    "consolidate_after": "5m",  # "consolidateAfter: 5m"
    "storage": "500Gi",  # scenario 5 PVC
    "storage_class": "gp3",
    "replicas": 3,  # "3-replica setup"
    "rf": 2,  # "RF=2"
}


def load(name):
    with open(os.path.join(RENDERED, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def kinds(docs):
    return sorted(d["kind"] for d in docs)


def container(sts, name="zeptod"):
    return next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def args_of(c):
    out = {}
    for a in c.get("args", []):
        if a.startswith("--"):
            k, _, v = a[2:].partition("=")
            out[k] = v
    return out


def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(text))
    assert m, f"not a duration: {text}"
    n, unit = int(m.group(1)), m.group(2) or "s"
    return {"ms": n / 1000, "s": n, "m": n * 60, "h": n * 3600}[unit]


def prestop_seconds(c):
    """Seconds the preStop hook may take: its sleep, or for `zeptod prestop` (the scale-in
    hook) its --timeout plus its --sleep."""
    hook = c["lifecycle"]["preStop"]
    if "sleep" in hook:
        return hook["sleep"]["seconds"]
    flags = dict(a[2:].partition("=")[::2] for a in hook["exec"]["command"] if a.startswith("--"))
    return seconds(flags["timeout"]) + seconds(flags["sleep"])


def all_pod_specs(docs):
    """(where, pod spec) for every workload in docs."""
    for d in docs:
        if d["kind"] in ("StatefulSet", "Deployment", "DaemonSet", "Job"):
            yield f'{d["kind"]}/{d["metadata"]["name"]}', d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield f'CronJob/{d["metadata"]["name"]}', d["spec"]["jobTemplate"]["spec"]["template"]["spec"]


class Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.default = load("default.yaml")
        cls.all = load("all-features.yaml")
        cls.single = load("single-node.yaml")
        cls.sts = one(cls.default, "StatefulSet")
        cls.c = container(cls.sts)
        cls.args = args_of(cls.c)
        cls.sts_all = one(cls.all, "StatefulSet")


class TestGuideNumbers(Base):
    """The rendered defaults carry every number the guide documents."""

    def test_guide_numbers_match_the_guide_text(self):
        if not os.path.exists(GUIDE):
            self.skipTest(f"{GUIDE} not found; using the pinned numbers only")
        text = open(GUIDE, encoding="utf-8").read()
        checks = {
            "heartbeat_s": r"heartbeat (\d+)s",
            "suspect_s": r"SUSPECT (\d+)s",
            "dead_s": r"DEAD (\d+)s",
            "readiness_fail_s": r"t=(\d+)s K8s: readinessProbe failed",
            "liveness_restart_s": r"t=(\d+)s K8s: livenessProbe failed",
            "prestop_s": r"preStop: sleep (\d+)s",
            "pdb_min_available": r"minAvailable: (\d+)",
            "hpa_scale_up_s": r"scaleUp:\s*stabilizationSeconds: (\d+)",
            "hpa_scale_down_s": r"scaleDown:\s*stabilizationSeconds: (\d+)",
            "hpa_max": r"scale to (\d+) replicas",
            "snapshot_interval_s": r"(\d+)s interval",
        }
        for key, rx in checks.items():
            m = re.search(rx, text)
            self.assertIsNotNone(m, f"guide: no match for {key} ({rx})")
            self.assertEqual(int(m.group(1)), GUIDE_NUMBERS[key], f"guide changed: {key}")
        self.assertIn('"minReplicas":3', text.replace(" ", ""))
        self.assertIn("consolidateAfter: 5m", text)
        self.assertIn("storage: 500Gi", text)
        self.assertIn("storageClassName: gp3", text)

    def test_readiness_fails_within_guide_window(self):
        p = self.c["readinessProbe"]
        self.assertEqual(p["periodSeconds"] * p["failureThreshold"], GUIDE_NUMBERS["readiness_fail_s"])
        self.assertLessEqual(p["timeoutSeconds"], p["periodSeconds"])

    def test_liveness_restarts_at_guide_time(self):
        p = self.c["livenessProbe"]
        self.assertEqual(p["periodSeconds"] * p["failureThreshold"], GUIDE_NUMBERS["liveness_restart_s"])
        self.assertGreater(p["periodSeconds"] * p["failureThreshold"],
                           self.c["readinessProbe"]["periodSeconds"] * self.c["readinessProbe"]["failureThreshold"],
                           "liveness must act after readiness")

    def test_startup_probe_covers_long_replay(self):
        p = self.c["startupProbe"]
        self.assertGreaterEqual(p["periodSeconds"] * p["failureThreshold"], 600)

    def test_prestop_sleep(self):
        self.assertEqual(self.c["lifecycle"]["preStop"]["sleep"]["seconds"], GUIDE_NUMBERS["prestop_s"])

    def test_pdb_min_available(self):
        self.assertEqual(one(self.default, "PodDisruptionBudget")["spec"]["minAvailable"],
                         GUIDE_NUMBERS["pdb_min_available"])

    def test_replicas_and_cluster_settings(self):
        self.assertEqual(self.sts["spec"]["replicas"], GUIDE_NUMBERS["replicas"])
        self.assertEqual(self.args["replication-factor"], str(GUIDE_NUMBERS["rf"]))
        self.assertEqual(seconds(self.args["heartbeat-interval"]), GUIDE_NUMBERS["heartbeat_s"])
        self.assertEqual(seconds(self.args["checkpoint-interval"]), GUIDE_NUMBERS["snapshot_interval_s"])
        self.assertEqual(self.args["partitions"], "64")
        self.assertEqual(self.args["ack"], "replicated")

    def test_hpa_numbers(self):
        # HPA is off by default; all-features turns it on without changing any number.
        self.assertEqual([d for d in self.default if d["kind"] == "HorizontalPodAutoscaler"], [])
        hpa = one(self.all, "HorizontalPodAutoscaler")["spec"]
        self.assertEqual(hpa["minReplicas"], GUIDE_NUMBERS["hpa_min"])
        self.assertEqual(hpa["maxReplicas"], GUIDE_NUMBERS["hpa_max"])
        self.assertEqual(hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"], GUIDE_NUMBERS["hpa_scale_up_s"])
        self.assertEqual(hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"], GUIDE_NUMBERS["hpa_scale_down_s"])
        names = sorted(m["resource"]["name"] for m in hpa["metrics"])
        self.assertEqual(names, ["cpu", "memory"])
        values = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))
        self.assertEqual(values["autoscaling"]["scaleUp"]["stabilizationSeconds"], GUIDE_NUMBERS["hpa_scale_up_s"])
        self.assertEqual(values["autoscaling"]["scaleDown"]["stabilizationSeconds"], GUIDE_NUMBERS["hpa_scale_down_s"])

    def test_storage(self):
        vct = self.sts["spec"]["volumeClaimTemplates"][0]["spec"]
        self.assertEqual(vct["accessModes"], ["ReadWriteOnce"])
        self.assertEqual(vct["storageClassName"], GUIDE_NUMBERS["storage_class"])
        self.assertEqual(vct["resources"]["requests"]["storage"], GUIDE_NUMBERS["storage"])

    def test_karpenter_pools(self):
        pools = {d["metadata"]["name"]: d for d in self.all if d["kind"] == "NodePool"}
        self.assertEqual(sorted(pools), ["zeptodb-analytics", "zeptodb-realtime"])

        def capacity(pool):
            req = pool["spec"]["template"]["spec"]["requirements"]
            return next(r["values"] for r in req if r["key"] == "karpenter.sh/capacity-type")

        self.assertEqual(capacity(pools["zeptodb-realtime"]), ["on-demand"])
        self.assertEqual(capacity(pools["zeptodb-analytics"]), ["spot"])
        for p in pools.values():
            self.assertEqual(p["spec"]["disruption"]["consolidateAfter"], GUIDE_NUMBERS["consolidate_after"])
        self.assertEqual(self.sts_all["spec"]["template"]["spec"]["nodeSelector"]["karpenter.sh/nodepool"],
                         "zeptodb-realtime", "the database runs on the on-demand pool only")


class TestSafety(Base):
    def check_pdb(self, docs):
        sts = one(docs, "StatefulSet")
        pdb = one(docs, "PodDisruptionBudget")["spec"]["minAvailable"]
        hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
        replicas = sts["spec"].get("replicas")
        if hpas:
            self.assertLessEqual(pdb, hpas[0]["spec"]["minReplicas"])
            self.assertLess(pdb, hpas[0]["spec"]["minReplicas"] if replicas is None else replicas)
        else:
            self.assertLess(pdb, replicas)

    def test_pdb_below_replicas_and_hpa_min(self):
        self.check_pdb(self.default)
        self.check_pdb(self.all)

    def test_grace_period_exceeds_prestop_and_drain(self):
        for docs in (self.default, self.all, self.single):
            sts = one(docs, "StatefulSet")
            c = container(sts)
            a = args_of(c)
            budget = (prestop_seconds(c) + seconds(a["drain-delay"])
                      + seconds(a["shutdown-timeout"]))
            self.assertLess(budget, sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])

    def test_scale_in_hook_reads_its_own_statefulset_with_a_minimal_role(self):
        # Default (no learners): a plain sleep, no API access, no token in the pod.
        self.assertIn("sleep", self.c["lifecycle"]["preStop"])
        self.assertFalse(self.sts["spec"]["template"]["spec"]["automountServiceAccountToken"])
        self.assertFalse([d for d in self.default if d["kind"] in ("Role", "RoleBinding")])
        # With learners: `zeptod prestop` on this StatefulSet, the namespace from the downward
        # API, the token mounted, and a Role allowing `get` on this StatefulSet only.
        sts = one(self.all, "StatefulSet")
        c = container(sts)
        cmd = c["lifecycle"]["preStop"]["exec"]["command"]
        self.assertEqual(cmd[:2], ["/usr/local/bin/zeptod", "prestop"])
        self.assertIn("--statefulset=" + sts["metadata"]["name"], cmd)
        self.assertIn("--sleep=%ds" % GUIDE_NUMBERS["prestop_s"], cmd)
        env = {e["name"]: e for e in c["env"]}
        self.assertEqual(env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace")
        pod = sts["spec"]["template"]["spec"]
        self.assertTrue(pod["automountServiceAccountToken"])
        role = one(self.all, "Role")
        self.assertEqual(role["rules"], [{"apiGroups": ["apps"], "resources": ["statefulsets"],
                                          "resourceNames": [sts["metadata"]["name"]], "verbs": ["get"]}])
        binding = one(self.all, "RoleBinding")
        self.assertEqual(binding["roleRef"]["name"], role["metadata"]["name"])
        self.assertEqual(binding["subjects"][0]["name"], pod["serviceAccountName"])
        # The flags exist in the zeptod source (the binary's own parser defines them).
        src = open(os.path.join(ROOT, "zeptod", "src", "prestop.rs"), encoding="utf-8").read()
        for a in cmd[2:]:
            flag = a[2:].partition("=")[0]
            self.assertIn("    %s:" % flag.replace("-", "_"), src, f"zeptod prestop has no --{flag}")

    def test_probes_match_the_server(self):
        src = open(os.path.join(ROOT, "zeptod", "src", "http.rs"), encoding="utf-8").read()
        for path in ("/health", "/ready"):
            self.assertRegex(src, r'route\(\s*"%s"' % re.escape(path), f"zeptod serves no {path}")
        for docs in (self.default, self.all, self.single):
            c = container(one(docs, "StatefulSet"))
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            self.assertEqual(ports["http"], 8123)
            self.assertEqual(args_of(c)["http-addr"], "0.0.0.0:8123")
            want = {"readinessProbe": "/ready", "livenessProbe": "/health", "startupProbe": "/health"}
            for probe, path in want.items():
                get = c[probe]["httpGet"]
                self.assertEqual(get["path"], path, probe)
                self.assertIn(get["port"], ("http", 8123), probe)

    def test_hpa_targets_the_statefulset(self):
        hpa = one(self.all, "HorizontalPodAutoscaler")
        ref = hpa["spec"]["scaleTargetRef"]
        self.assertEqual((ref["apiVersion"], ref["kind"], ref["name"]),
                         ("apps/v1", "StatefulSet", self.sts_all["metadata"]["name"]))
        self.assertNotIn("replicas", self.sts_all["spec"], "with an HPA the chart must not own replicas")

    def test_every_container_non_root_and_locked_down(self):
        for docs in (self.default, self.all, self.single):
            for where, spec in all_pod_specs(docs):
                pod = spec.get("securityContext", {})
                for c in spec.get("initContainers", []) + spec["containers"]:
                    sc = c.get("securityContext", {})
                    who = f'{where} container {c["name"]}'
                    self.assertTrue(sc.get("runAsNonRoot", pod.get("runAsNonRoot")), who)
                    self.assertNotEqual(sc.get("runAsUser", pod.get("runAsUser")), 0, who)
                    self.assertIsNotNone(sc.get("runAsUser", pod.get("runAsUser")), who)
                    self.assertIs(sc.get("allowPrivilegeEscalation"), False, who)
                    self.assertIs(sc.get("readOnlyRootFilesystem"), True, who)
                    self.assertEqual(sc.get("capabilities", {}).get("drop"), ["ALL"], who)
                    self.assertNotIn("privileged", [k for k, v in sc.items() if v is True], who)

    def test_rollout_one_pod_at_a_time(self):
        spec = self.sts["spec"]
        self.assertEqual(spec["updateStrategy"]["type"], "RollingUpdate")
        self.assertEqual(spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1)
        self.assertEqual(spec["updateStrategy"]["rollingUpdate"]["partition"], 0)
        self.assertEqual(spec["podManagementPolicy"], "Parallel")
        self.assertGreater(spec["minReadySeconds"], 0)

    def test_cluster_wiring(self):
        headless = one(self.default, "Service", "zeptodb-headless")["spec"]
        self.assertEqual(headless["clusterIP"], "None")
        self.assertTrue(headless["publishNotReadyAddresses"])
        self.assertIn(8124, [p["port"] for p in headless["ports"]])
        self.assertEqual(self.sts["spec"]["serviceName"], "zeptodb-headless")
        self.assertEqual(self.args["node-id"], "auto")
        self.assertEqual(self.args["grpc-addr"], "0.0.0.0:8124")
        peers = self.args["peers"].split(",")
        self.assertEqual(len(peers), 3)
        for i, p in enumerate(peers):
            self.assertEqual(p, f"{i + 1}=zeptodb-{i}.zeptodb-headless.zeptodb.svc.cluster.local:8124")
        self.assertEqual(self.args["advertise-addr"],
                         "$(POD_NAME).zeptodb-headless.zeptodb.svc.cluster.local:8124")
        self.assertTrue(self.args["cluster-secret-file"].startswith("/etc/zeptodb/cluster/"))
        self.assertNotIn("insecure-cluster", self.args)
        client = one(self.default, "Service", "zeptodb")["spec"]
        self.assertEqual(client["type"], "ClusterIP")
        self.assertEqual([p["port"] for p in client["ports"]], [8123])
        self.assertEqual(one(self.all, "Service", "zeptodb")["spec"]["type"], "LoadBalancer")

    def test_anti_affinity_nodes_and_zones(self):
        spec = self.sts["spec"]["template"]["spec"]
        req = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        self.assertEqual([t["topologyKey"] for t in req], ["kubernetes.io/hostname"])
        self.assertEqual([t["topologyKey"] for t in spec["topologySpreadConstraints"]],
                         ["topology.kubernetes.io/zone"])

    def test_secrets_generated_once_and_never_in_notes(self):
        src = open(os.path.join(CHART, "templates", "secret.yaml")).read()
        self.assertIn('lookup "v1" "Secret"', src)
        sec = one(self.default, "Secret")
        self.assertEqual(sorted(sec["data"]), ["admin-key", "cluster-secret"])
        manifest_path = os.path.join(RENDERED, "notes-default-manifest.yaml")
        with open(manifest_path) as f:
            notes = one([d for d in yaml.safe_load_all(f) if d], "ConfigMap", "zz-rendered-notes")["data"]["notes"]
        self.assertIn("kubectl get pods", notes)
        self.assertIn("/health", notes)
        self.assertIn("count(*)", notes)
        with open(manifest_path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        secret = one(docs, "Secret")
        for key, value in secret["data"].items():
            plain = base64.b64decode(value).decode()
            self.assertGreaterEqual(len(plain), 32, key)
            self.assertNotIn(plain, notes, f"{key} printed in NOTES")
            self.assertNotIn(value, notes, f"{key} printed in NOTES")

    def test_backup_cronjob(self):
        self.assertEqual([d for d in self.default if d["kind"] == "CronJob"], [], "backup must be off by default")
        cj = one(self.all, "CronJob")["spec"]
        self.assertEqual(cj["schedule"], "0 2 * * *")
        self.assertEqual(cj["concurrencyPolicy"], "Forbid")
        c = cj["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(c["args"][0], "backup")
        self.assertIn("--to=s3://your-zeptodb-backups/backups/", c["args"])
        self.assertTrue(any(a.startswith("--server=http://") for a in c["args"]), c["args"])
        self.assertIn("ZEPTO_ADMIN_KEY", [e["name"] for e in c["env"]])
        # Continuous WAL archiving on every pod (ADR 0011).
        pod = one(self.all, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
        self.assertIn("--archive-url=s3://your-zeptodb-backups/backups/", pod["args"])
        self.assertIn("--archive-interval=5s", pod["args"])
        default_pod = one(self.default, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
        self.assertFalse(any(a.startswith("--archive-url") for a in default_pod["args"]))

    def test_optional_features_off_by_default(self):
        self.assertEqual(kinds(self.default),
                         ["PodDisruptionBudget", "Secret", "Service", "Service", "ServiceAccount", "StatefulSet"])
        self.assertEqual(kinds(self.all), sorted(
            ["CronJob", "HorizontalPodAutoscaler", "NetworkPolicy", "NodePool", "NodePool",
             "PodDisruptionBudget", "Role", "RoleBinding", "Secret", "Service", "Service",
             "ServiceAccount", "ServiceMonitor", "StatefulSet"]))

    def test_network_policy(self):
        np = one(self.all, "NetworkPolicy")["spec"]
        rules = {r["ports"][0]["port"]: r for r in np["ingress"]}
        self.assertEqual(sorted(rules), [8123, 8124])
        self.assertEqual(len(rules[8124]["from"]), 1)
        self.assertIn("podSelector", rules[8124]["from"][0])

    def test_service_monitor_scrapes_each_pod_once(self):
        sm = one(self.all, "ServiceMonitor")["spec"]
        self.assertEqual(sm["selector"]["matchLabels"]["zeptodb.io/service"], "headless")
        self.assertEqual(sm["endpoints"][0]["path"], "/metrics")

    def test_single_node(self):
        c = container(one(self.single, "StatefulSet"))
        a = args_of(c)
        self.assertNotIn("peers", a)
        self.assertNotIn("node-id", a)
        vols = one(self.single, "StatefulSet")["spec"]["template"]["spec"]["volumes"]
        data = next(v for v in vols if v["name"] == "data")
        self.assertEqual(data["persistentVolumeClaim"]["claimName"], "zeptodb-data-restored")
        self.assertEqual([d for d in self.single if d["kind"] == "PodDisruptionBudget"], [])

    def test_dockerfile(self):
        text = open(os.path.join(ROOT, "Dockerfile")).read()
        self.assertIn("cargo build --release -p zeptod --locked", text)
        self.assertRegex(text, r"(?m)^USER 10001")
        self.assertRegex(text, r'(?m)^VOLUME \["/data"\]')
        self.assertRegex(text, r"(?m)^EXPOSE 8123 8124")
        hc = re.search(r"(?m)^HEALTHCHECK (?:[^\n]*\\\n)*[^\n]*", text)
        self.assertIsNotNone(hc, "no HEALTHCHECK instruction")
        self.assertIn("/health", hc.group(0))
        self.assertIn("8123", hc.group(0))
        self.assertRegex(text, r'(?m)^ENTRYPOINT \["/usr/local/bin/zeptod"\]')
        values = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))
        self.assertEqual(values["securityContext"]["runAsUser"], 10001, "chart uid = image uid")


class Result(unittest.TextTestResult):
    pass


def main():
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    res = unittest.TextTestRunner(verbosity=2, resultclass=Result).run(suite)
    failed = len(res.failures) + len(res.errors)
    skipped = len(res.skipped)
    passed = res.testsRun - failed - skipped
    print(f"chart invariants: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or res.testsRun == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
