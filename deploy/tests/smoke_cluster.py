"""Start the chart's rendered zeptod command line as a real 3-node cluster on this machine.

usage: smoke_cluster.py RENDERED_DIR ZEPTOD_BINARY

Takes the container args of the StatefulSet in RENDERED_DIR/default.yaml and checks that:
- every flag the chart passes exists in `zeptod --help` (the chart and the server agree);
- three processes started with exactly those args, with only the addresses rewritten for one
  machine (pod DNS names of the headless Service -> localhost ports, /data -> temp dirs, the
  cluster secret file -> a temp file) and each in its own UTS namespace with the pod's
  hostname (zeptodb-0..2, so `--node-id auto` is exercised), all answer /health, then /ready
  (the readiness probe's path), and accept a write with the admin key;
- SIGTERM on one (what the kubelet sends after the preStop) turns its /ready to 503 at once
  and it exits 0 within the grace period left after the preStop hook.
Every process is stopped at the end; every wait is bounded. Prints "N passed, N failed".
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

RENDERED, BINARY = sys.argv[1], sys.argv[2]
ADMIN_KEY = "smoke-admin-key-0123456789abcdef"
results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
    return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, timeout=2.0, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                 headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, str(e)


def wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


def main():
    with open(os.path.join(RENDERED, "default.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    c = next(x for x in pod["containers"] if x["name"] == "zeptod")
    args = c["args"]
    grace = pod["terminationGracePeriodSeconds"]
    prestop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    replicas = sts["spec"]["replicas"]

    helptext = subprocess.run([BINARY, "--help"], capture_output=True, text=True, timeout=30).stdout
    known = set(re.findall(r"--([a-z0-9-]+)", helptext))
    flags = [a[2:].split("=", 1)[0] for a in args if a.startswith("--")]
    unknown = [f for f in flags if f not in known]
    check("every chart flag exists in zeptod --help", not unknown, f"unknown: {unknown}" if unknown else
          f"{len(flags)} flags")

    tmp = tempfile.mkdtemp(prefix="zepto-smoke-")
    secret = os.path.join(tmp, "cluster-secret")
    with open(secret, "w") as f:
        f.write("smoke-cluster-secret-" + os.urandom(16).hex())
    http = [free_port() for _ in range(replicas)]
    grpc = [free_port() for _ in range(replicas)]
    use_uts = os.geteuid() == 0 and shutil.which("unshare") is not None
    procs = []
    try:
        for i in range(replicas):
            a = []
            for arg in args:
                if arg.startswith("--data-dir="):
                    arg = f"--data-dir={tmp}/d{i}"
                elif arg.startswith("--http-addr="):
                    arg = f"--http-addr=127.0.0.1:{http[i]}"
                elif arg.startswith("--grpc-addr="):
                    arg = f"--grpc-addr=127.0.0.1:{grpc[i]}"
                elif arg.startswith("--advertise-addr="):
                    assert arg.startswith("--advertise-addr=$(POD_NAME)."), arg
                    arg = f"--advertise-addr=localhost:{grpc[i]}"
                elif arg.startswith("--peers="):
                    arg = re.sub(r"zeptodb-(\d+)\.zeptodb-headless\.zeptodb\.svc\.cluster\.local:8124",
                                 lambda m: f"localhost:{grpc[int(m.group(1))]}", arg)
                elif arg.startswith("--cluster-secret-file="):
                    arg = f"--cluster-secret-file={secret}"
                elif arg == "--node-id=auto" and not use_uts:
                    arg = f"--node-id={i + 1}"
                a.append(arg)
            env = dict(os.environ, ZEPTO_ADMIN_KEY=ADMIN_KEY)
            if use_uts:
                cmd = ["unshare", "--uts", "sh", "-c", f'hostname zeptodb-{i} && exec "$@"', "sh", BINARY, *a]
            else:
                cmd = [BINARY, *a]
            log = open(os.path.join(tmp, f"n{i}.log"), "w")
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True))
        print(f"started {replicas} nodes (hostnames zeptodb-N via unshare: {use_uts}), http ports {http}")

        check("/health 200 on every node",
              wait_for(lambda: all(get(p, "/health")[0] == 200 for p in http), 30))
        t0 = time.monotonic()
        ready = wait_for(lambda: all(get(p, "/ready")[0] == 200 for p in http), 60)
        check("/ready 200 on every node (cluster formed)", ready, f"{time.monotonic() - t0:.1f} s")
        if ready:
            st, body = get(http[0], "/admin/cluster")
            ids = sorted(n["id"] for n in json.loads(body).get("nodes", [])) if st == 200 else []
            check("node ids 1..3 from the hostnames (--node-id auto)", ids == list(range(1, replicas + 1)),
                  f"{ids}")
            st, body = get(http[0], "/", body=b"CREATE TABLE smoke (ts TIMESTAMP, symbol SYMBOL, v BIGINT)")
            check("DDL with the admin key", st == 200, body[:200])
            # Sent to another node than the DDL: the table reaches it when that node applies
            # the committed metadata, so allow a few seconds and say how long it took.
            t1 = time.monotonic()
            first = None
            while True:
                # Bulk form: routed to the partition's primary and replicated in cluster mode.
                st, body = get(http[1], "/?query=INSERT%20INTO%20smoke%20FORMAT%20CSV",
                               body=b"2024-01-02T09:30:00Z,A,1\n", timeout=5.0)
                first = first or (st, body[:160])
                if st == 200 or time.monotonic() - t1 > 10:
                    break
                time.sleep(0.1)
            waited = time.monotonic() - t1
            detail = body[:200] + (f" after {waited:.1f} s, first answer {first}" if first[0] != 200 else "")
            check("write on another node acknowledged (--ack replicated)", st == 200, detail)

        # SIGTERM the last pod, as the kubelet does after the preStop hook.
        last = procs[-1]
        t0 = time.monotonic()
        os.killpg(last.pid, signal.SIGTERM)
        st_ready = None
        if wait_for(lambda: get(http[-1], "/ready", timeout=0.5)[0] == 503, 3):
            st_ready = 503
        check("SIGTERM: /ready 503 at once (drain)", st_ready == 503)
        budget = grace - prestop
        try:
            rc = last.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - t0
        check(f"SIGTERM: exit 0 within terminationGracePeriodSeconds - preStop = {budget} s",
              rc == 0, f"exit {rc} after {took:.1f} s")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if not all(results):
            for i in range(len(procs)):
                print(f"--- node {i} log (tail)")
                with open(os.path.join(tmp, f"n{i}.log")) as f:
                    print("".join(f.readlines()[-15:]))
        shutil.rmtree(tmp, ignore_errors=True)
    passed = sum(results)
    print(f"cluster smoke: {passed} passed, {len(results) - passed} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
