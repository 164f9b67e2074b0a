"""Scale a local 3-node cluster out to 4 and measure how the old nodes' HDB shrinks once
they release the copies moved to the new node (ADR 0016).

Usage (from the repository root, after `cargo build --release -p zeptod -p zepto-bench`):
    python3 zepto-bench/scripts/scale_out_release.py RELEASE_AFTER ROWS [DATA_DIR]
e.g. `... 10s 2000000`. Uses 127.0.0.1 ports 8121-8124 and 9301-9304; prints one JSON line:
seconds from node 4's start to a balanced map, to every moved copy released, to the files
deleted (a checkpoint on each node), HDB bytes per node before / at balanced / after, and
count(*) through every node.
"""
import json, os, subprocess, sys, time, urllib.request, shutil
TARGET = os.environ.get("CARGO_TARGET_DIR", "target")
BIN = os.path.join(TARGET, "release", "zeptod")
BENCH = os.path.join(TARGET, "release", "zepto-bench")
ROOT = sys.argv[3] if len(sys.argv) > 3 else "/tmp/zepto-scale-out-release"
KEY = "k" * 24
shutil.rmtree(ROOT, ignore_errors=True)
os.makedirs(ROOT)
peers = ",".join(f"{i}=127.0.0.1:{9300+i}" for i in (1, 2, 3))
procs = {}
def start(i):
    args = [BIN, "--node-id", str(i), "--peers", peers, "--grpc-addr", f"127.0.0.1:{9300+i}",
            "--advertise-addr", f"127.0.0.1:{9300+i}", "--http-addr", f"127.0.0.1:{8120+i}",
            "--data-dir", f"{ROOT}/n{i}", "--insecure-cluster", "--partitions", "16",
            "--seal-idle", "3s", "--release-after", sys.argv[1], "--admin-key", KEY,
            "--heartbeat-interval", "200ms"]
    procs[i] = subprocess.Popen(args, stdout=open(f"{ROOT}/n{i}.log", "w"), stderr=subprocess.STDOUT)
def req(i, method, path, body=None):
    r = urllib.request.Request(f"http://127.0.0.1:{8120+i}{path}", data=body, method=method,
                               headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(r, timeout=30) as f:
        return f.read().decode()
def metric(i, name):
    for l in req(i, "GET", "/metrics").splitlines():
        if l.startswith(name + " "):
            return float(l.split()[1])
    return None
def wait(what, f, t=300):
    d = time.time() + t
    while time.time() < d:
        try:
            v = f()
            if v: return v
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit(f"timeout: {what}")
def hdb_bytes(i):
    tot = 0
    for dp, _, fs in os.walk(f"{ROOT}/n{i}/hdb"):
        tot += sum(os.path.getsize(os.path.join(dp, f)) for f in fs)
    return tot
try:
    for i in (1, 2, 3): start(i)
    for i in (1, 2, 3): wait("ready", lambda: req(i, "GET", "/ready"))
    rows = int(sys.argv[2])
    subprocess.run([BENCH, "ingest", "--url", "http://127.0.0.1:8121", "--token", KEY, "--rows", str(rows), "--batch-rows", "100000"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for i in (1, 2, 3): wait("hdb", lambda: metric(i, "zepto_memory_rows") == 0 and metric(i, "zepto_hdb_chunks") > 0)
    for i in (1, 2, 3): req(i, "POST", "/admin/snapshot")
    before = {i: hdb_bytes(i) for i in (1, 2, 3)}
    t0 = time.time()
    args = [BIN, "--node-id", "4", "--peers", peers, "--grpc-addr", "127.0.0.1:9304", "--advertise-addr", "127.0.0.1:9304",
            "--http-addr", "127.0.0.1:8124", "--data-dir", f"{ROOT}/n4", "--insecure-cluster", "--partitions", "16",
            "--seal-idle", "3s", "--release-after", sys.argv[1], "--admin-key", KEY, "--heartbeat-interval", "200ms"]
    procs[4] = subprocess.Popen(args, stdout=open(f"{ROOT}/n4.log", "w"), stderr=subprocess.STDOUT)
    def balanced():
        v = json.loads(req(1, "GET", "/admin/cluster"))
        return v["rebalance"]["plan"] == "balanced" and len(v["nodes"]) == 4 and all(len(p["in_sync"]) == 2 for p in v["partitions"]) and any(p["primary"] == 4 or p["replica"] == 4 for p in v["partitions"])
    wait("balanced", balanced)
    t_bal = time.time() - t0
    at_bal = {i: hdb_bytes(i) for i in (1, 2, 3)}
    def released():
        for i in (1, 2, 3):
            v = json.loads(req(i, "GET", "/admin/cluster"))
            for l in v["local_partitions"]:
                if l["role"] == "none" and (l["rows"] != 0 or l["next_seq"] != 0):
                    return False
        return True
    wait("released", released)
    t_rel = time.time() - t0
    for i in (1, 2, 3): req(i, "POST", "/admin/snapshot")
    t_del = time.time() - t0
    after = {i: hdb_bytes(i) for i in (1, 2, 3)}
    n = sum(metric(i, "zepto_cluster_partitions_released_total") for i in (1, 2, 3))
    counts = [req(i, "POST", "/?query=SELECT%20count(*)%20FROM%20trades%20FORMAT%20CSV").strip() for i in (1, 2, 3, 4)]
    print(json.dumps({"rows": rows, "release_after": sys.argv[1], "balanced_s": round(t_bal, 2), "released_s": round(t_rel, 2),
                      "files_deleted_s": round(t_del, 2), "released": n, "hdb_before": before, "hdb_at_balanced": at_bal,
                      "hdb_after": after, "hdb_node4": hdb_bytes(4), "counts": counts}))
finally:
    for p in procs.values():
        if p: p.terminate()
    for p in procs.values():
        if p: p.wait()
