#!/usr/bin/env python3
"""Validates the deployment files: Dockerfile, deploy/k8s, deploy/prometheus, deploy/grafana,
deploy/compose.yaml.

Every YAML and JSON file under deploy/ must parse. Kubernetes manifests are checked against a
schema of the fields they may use (a misspelt key fails) and for consistency: selectors match
pod labels, probes are native gRPC probes on the gRPC port, ports agree with the Dockerfile,
resources follow the sizing rule computed from the default model repository, the HPA and
PodMonitor point at what exists. Prometheus rules may only reference metric names the server
exports (cross-checked with server/metrics.cc when present) or series recorded by the rules;
the dashboard only recorded series (plus the info and process gauges). promtool checks the
config and rules and runs the rule unit tests.

No Debian package provides kubeconform, and kubectl --dry-run=client needs an API server, so
the Kubernetes schema check lives here.

Usage: validate_manifests.py REPO_ROOT [--promtool PATH]
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys

import yaml

FAILURES = []
PASSES = [0]


def check(cond, what):
    if cond:
        PASSES[0] += 1
    else:
        FAILURES.append(what)
        print(f"FAIL: {what}")
    return cond


# ------------------------------------------------------------------------------------------
# What the server exports (issue "gRPC service": exactly these names) and its defaults.
COUNTERS = ["adasoftmax_requests_total", "adasoftmax_audit_queries_total",
            "adasoftmax_audit_failures_total", "adasoftmax_repository_reloads_total"]
HISTOGRAMS = ["adasoftmax_samples_per_query", "adasoftmax_sample_fraction",
              "adasoftmax_request_duration_seconds", "adasoftmax_queue_duration_seconds",
              "adasoftmax_batch_size"]
GAUGES = ["adasoftmax_model_info", "adasoftmax_sample_cost", "adasoftmax_exact_batch_share",
          "adasoftmax_build_info", "adasoftmax_repository_unavailable_models"]
PROCESS = ["process_resident_memory_bytes", "process_virtual_memory_bytes",
           "process_start_time_seconds", "process_cpu_seconds_total", "process_open_fds",
           "process_max_fds"]
LABELS = {"adasoftmax_requests_total": {"model", "mode", "code"},
          "adasoftmax_samples_per_query": {"model", "mode"},
          "adasoftmax_sample_fraction": {"model", "mode"},
          "adasoftmax_request_duration_seconds": {"model", "mode"},
          "adasoftmax_queue_duration_seconds": {"model"},
          "adasoftmax_batch_size": {"model"},
          "adasoftmax_model_info": {"model", "n", "d", "dtype"},
          "adasoftmax_sample_cost": {"model"},
          "adasoftmax_exact_batch_share": {"model"},
          "adasoftmax_build_info": {"version"},
          "adasoftmax_audit_queries_total": {"model"},
          "adasoftmax_audit_failures_total": {"model"},
          "adasoftmax_repository_reloads_total": {"result"},
          "adasoftmax_repository_unavailable_models": set()}
GRPC_PORT = 50051
METRICS_PORT = 9464
# memory = model bytes x (LAYOUT_COPIES + SAMPLING_FRACTION x threads) + OVERHEAD (see the
# comments in deploy/k8s/*.yaml). SAMPLING_FRACTION: what the queries each batch thread samples
# at once may hold (kDefaultSamplingMemoryFraction, core/adaptive_softmax.h).
LAYOUT_COPIES = 2
SAMPLING_FRACTION = 0.05
OVERHEAD_BYTES = 256 * 2**20


def exported_series():
    names = set(COUNTERS) | set(GAUGES) | set(PROCESS) | {"up"}
    for h in HISTOGRAMS:
        names |= {h + "_bucket", h + "_sum", h + "_count"}
    return names


# ------------------------------------------------------------------------------------------
# Kubernetes schema: the fields these manifests may use. dict = object with these keys,
# [x] = list of x, None = any value (leaf or free-form map such as labels).
ANY = None
LABEL_SELECTOR = {"matchLabels": ANY, "matchExpressions": ANY}
META = {"name": ANY, "namespace": ANY, "labels": ANY, "annotations": ANY}
PROBE = {"grpc": {"port": ANY, "service": ANY}, "httpGet": ANY, "tcpSocket": ANY, "exec": ANY,
         "initialDelaySeconds": ANY, "periodSeconds": ANY, "timeoutSeconds": ANY,
         "successThreshold": ANY, "failureThreshold": ANY, "terminationGracePeriodSeconds": ANY}
QUANTITIES = {"cpu": ANY, "memory": ANY, "ephemeral-storage": ANY}
CONTAINER = {
    "name": ANY, "image": ANY, "imagePullPolicy": ANY, "command": ANY, "args": ANY,
    "env": [{"name": ANY, "value": ANY, "valueFrom": ANY}], "envFrom": ANY,
    "ports": [{"name": ANY, "containerPort": ANY, "protocol": ANY, "hostPort": ANY,
               "hostIP": ANY}],
    "resources": {"requests": QUANTITIES, "limits": QUANTITIES},
    "livenessProbe": PROBE, "readinessProbe": PROBE, "startupProbe": PROBE,
    "securityContext": {"runAsNonRoot": ANY, "runAsUser": ANY, "runAsGroup": ANY,
                        "allowPrivilegeEscalation": ANY, "readOnlyRootFilesystem": ANY,
                        "privileged": ANY, "capabilities": {"drop": ANY, "add": ANY},
                        "seccompProfile": ANY},
    "volumeMounts": [{"name": ANY, "mountPath": ANY, "readOnly": ANY, "subPath": ANY}],
    "workingDir": ANY, "lifecycle": ANY, "terminationMessagePolicy": ANY,
    "restartPolicy": ANY,
}
POD_SPEC = {
    "containers": [CONTAINER], "initContainers": [CONTAINER],
    "volumes": [{"name": ANY,
                 "persistentVolumeClaim": {"claimName": ANY, "readOnly": ANY},
                 "emptyDir": {"sizeLimit": ANY, "medium": ANY},
                 "configMap": ANY, "secret": ANY, "projected": ANY}],
    "securityContext": {"runAsNonRoot": ANY, "runAsUser": ANY, "runAsGroup": ANY,
                        "fsGroup": ANY, "seccompProfile": {"type": ANY}},
    "terminationGracePeriodSeconds": ANY,
    "topologySpreadConstraints": [{"maxSkew": ANY, "topologyKey": ANY,
                                   "whenUnsatisfiable": ANY,
                                   "labelSelector": LABEL_SELECTOR}],
    "affinity": ANY, "nodeSelector": ANY, "tolerations": ANY, "serviceAccountName": ANY,
    "automountServiceAccountToken": ANY, "priorityClassName": ANY, "imagePullSecrets": ANY,
    "enableServiceLinks": ANY, "shareProcessNamespace": ANY,
}
SCHEMAS = {
    ("apps/v1", "Deployment"): {
        "replicas": ANY, "selector": LABEL_SELECTOR, "strategy": {
            "type": ANY, "rollingUpdate": {"maxUnavailable": ANY, "maxSurge": ANY}},
        "minReadySeconds": ANY, "revisionHistoryLimit": ANY, "progressDeadlineSeconds": ANY,
        "template": {"metadata": META, "spec": POD_SPEC}},
    ("v1", "Service"): {
        "type": ANY, "selector": ANY, "clusterIP": ANY, "sessionAffinity": ANY,
        "ports": [{"name": ANY, "port": ANY, "targetPort": ANY, "protocol": ANY,
                   "appProtocol": ANY, "nodePort": ANY}]},
    ("autoscaling/v2", "HorizontalPodAutoscaler"): {
        "scaleTargetRef": {"apiVersion": ANY, "kind": ANY, "name": ANY},
        "minReplicas": ANY, "maxReplicas": ANY,
        "metrics": [{"type": ANY, "resource": {"name": ANY, "target": {
            "type": ANY, "averageUtilization": ANY, "averageValue": ANY}},
            "pods": ANY, "external": ANY, "object": ANY}],
        "behavior": {d: {"stabilizationWindowSeconds": ANY, "selectPolicy": ANY,
                         "policies": [{"type": ANY, "value": ANY, "periodSeconds": ANY}]}
                     for d in ("scaleUp", "scaleDown")}},
    ("policy/v1", "PodDisruptionBudget"): {
        "minAvailable": ANY, "maxUnavailable": ANY, "selector": LABEL_SELECTOR},
    ("v1", "PersistentVolumeClaim"): {
        "accessModes": ANY, "storageClassName": ANY, "volumeMode": ANY,
        "resources": {"requests": {"storage": ANY}}},
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        "selector": LABEL_SELECTOR, "namespaceSelector": ANY, "jobLabel": ANY,
        "podMetricsEndpoints": [{"port": ANY, "path": ANY, "interval": ANY,
                                 "scrapeTimeout": ANY, "scheme": ANY, "relabelings": ANY,
                                 "metricRelabelings": ANY}]},
}


def check_schema(value, schema, where):
    if schema is ANY:
        return
    if isinstance(schema, list):
        if check(isinstance(value, list), f"{where}: expected a list"):
            for i, item in enumerate(value):
                check_schema(item, schema[0], f"{where}[{i}]")
        return
    if not check(isinstance(value, dict), f"{where}: expected a mapping"):
        return
    for key, sub in value.items():
        if check(key in schema, f"{where}: unknown field '{key}'"):
            check_schema(sub, schema[key], f"{where}.{key}")


def parse_quantity(q):
    """Kubernetes quantity to a number (cores for cpu, bytes for memory)."""
    q = str(q)
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3, "k": 1e3,
                "M": 1e6, "G": 1e9, "T": 1e12}
    for s, f in suffixes.items():
        if q.endswith(s):
            return float(q[:-len(s)]) * f
    return float(q)


DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# ------------------------------------------------------------------------------------------
def read_dockerfile(path):
    """Instructions as (KEYWORD, text) with continuation lines joined."""
    out, cur = [], ""
    for line in open(path, encoding="utf-8"):
        s = line.rstrip("\n")
        if not cur and (not s.strip() or s.lstrip().startswith("#")):
            continue
        if cur and s.lstrip().startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        kw, _, rest = cur.strip().partition(" ")
        out.append((kw.upper(), rest.strip()))
        cur = ""
    return out


def check_dockerfile(root):
    print("== Dockerfile")
    path = os.path.join(root, "Dockerfile")
    ins = read_dockerfile(path)
    froms = [t for k, t in ins if k == "FROM"]
    check(len(froms) >= 2, "Dockerfile: multi-stage (two FROM at least)")
    for f in froms:
        check(f.split()[0] == "debian:bookworm-slim", f"Dockerfile: FROM {f} is debian:bookworm-slim")
    final = []  # instructions of the last stage
    for k, t in ins:
        final = [] if k == "FROM" else final + [(k, t)]
    args = {}
    for k, t in ins:
        if k == "ARG" and "=" in t:
            n, _, v = t.partition("=")
            args[n] = v
    user = [t for k, t in final if k == "USER"]
    uid = None
    if check(user, "Dockerfile: the runtime stage sets USER"):
        u = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), user[-1])
        uid = u.split(":")[0]
        check(uid.isdigit() and int(uid) != 0, f"Dockerfile: USER {u} is numeric and not root")
    exposed = set()
    for k, t in final:
        if k == "EXPOSE":
            exposed |= {int(p.split("/")[0]) for p in t.split()}
    check(exposed == {GRPC_PORT, METRICS_PORT}, f"Dockerfile: EXPOSE {sorted(exposed)} = gRPC and metrics ports")
    env = {}
    for k, t in final:
        if k == "ENV":
            for m in re.finditer(r"(\w+)=(\"[^\"]*\"|\S+)", t):
                env[m.group(1)] = m.group(2).strip('"')
    check(env.get("ADASOFTMAX_ADDRESS") == f"0.0.0.0:{GRPC_PORT}", "Dockerfile: gRPC on 0.0.0.0")
    check(env.get("ADASOFTMAX_METRICS_ADDRESS") == f"0.0.0.0:{METRICS_PORT}", "Dockerfile: metrics on 0.0.0.0")
    check(env.get("ADASOFTMAX_MODEL_REPOSITORY") == "/models", "Dockerfile: model repository /models")
    check(bool(env.get("ADASOFTMAX_CACHE_DIR")), "Dockerfile: ADASOFTMAX_CACHE_DIR set")
    hc = [t for k, t in final if k == "HEALTHCHECK"]
    check(hc and "adasoftmax health" in hc[-1], "Dockerfile: HEALTHCHECK runs adasoftmax health")
    ep = [t for k, t in final if k == "ENTRYPOINT"]
    check(ep and "adasoftmax-server" in ep[-1], "Dockerfile: ENTRYPOINT is the server")
    runs = " ".join(t for k, t in ins if k == "RUN")
    check("ctest" in runs and "-L unit" in runs, "Dockerfile: the build stage runs the unit tests")
    check("CMAKE_BUILD_TYPE=Release" in runs, "Dockerfile: Release build")
    ignore = open(os.path.join(root, ".dockerignore"), encoding="utf-8").read().split()
    check("build/" in ignore or "build" in ignore, ".dockerignore: keeps build/ out")
    check(".git" in ignore, ".dockerignore: keeps .git out")
    return {"uid": int(uid) if uid and uid.isdigit() else None, "env": env}


# ------------------------------------------------------------------------------------------
def npy_shape(path):
    with open(path, "rb") as f:
        magic = f.read(6)
        if magic != b"\x93NUMPY":
            return None
        major = f.read(2)[0]
        n = struct.unpack("<H" if major == 1 else "<I", f.read(2 if major == 1 else 4))[0]
        header = f.read(n).decode("latin1")
    m = re.search(r"'shape':\s*\(([^)]*)\)", header)
    return tuple(int(x) for x in m.group(1).split(",") if x.strip()) if m else None


def default_model_bytes(root):
    """Bytes of float32 weights in deploy/models (n x d x 4 per model), or None if unknown."""
    models = os.path.join(root, "deploy", "models")
    if not os.path.isdir(models):
        return None, {}
    total, per = 0, {}
    for name in sorted(os.listdir(models)):
        cfg = os.path.join(models, name, "model.pbtxt")
        if not os.path.isfile(cfg):
            continue
        text = open(cfg, encoding="utf-8").read()
        syn = re.search(r"synthetic\s*:?\s*\{([^}]*)\}", text)
        if syn:
            n = re.search(r"\bn\s*:\s*(\d+)", syn.group(1))
            d = re.search(r"\bd\s*:\s*(\d+)", syn.group(1))
            if not (n and d):
                return None, per
            per[name] = int(n.group(1)) * int(d.group(1)) * 4
        else:
            w = re.search(r"\bweights\s*:\s*\"([^\"]+)\"", text)
            if not w:
                return None, per
            path = os.path.normpath(os.path.join(models, name, w.group(1)))
            shape = npy_shape(path) if path.endswith(".npy") and os.path.isfile(path) else None
            if not shape or len(shape) != 2:
                return None, per
            per[name] = shape[0] * shape[1] * 4
        total += per[name]
    return total, per


# ------------------------------------------------------------------------------------------
def pod_templates(docs):
    for d in docs:
        if d.get("kind") == "Deployment":
            yield d, d["spec"]["template"]


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_k8s(root, docker, model_bytes):
    print("== deploy/k8s")
    k8s_dir = os.path.join(root, "deploy", "k8s")
    docs, files = [], {}
    for f in sorted(os.listdir(k8s_dir)):
        if not f.endswith((".yaml", ".yml")):
            continue
        for d in yaml.safe_load_all(open(os.path.join(k8s_dir, f), encoding="utf-8")):
            if d is None:
                continue
            docs.append(d)
            files[id(d)] = f
    check(docs, "deploy/k8s: has manifests")
    for d in docs:
        where = f"{files[id(d)]}:{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        key = (d.get("apiVersion"), d.get("kind"))
        if not check(key in SCHEMAS, f"{where}: known apiVersion/kind {key}"):
            continue
        check(set(d) <= {"apiVersion", "kind", "metadata", "spec"}, f"{where}: top-level fields")
        check_schema(d.get("metadata"), META, f"{where}.metadata")
        name = d.get("metadata", {}).get("name", "")
        check(bool(DNS_LABEL.match(name)), f"{where}: metadata.name is a DNS label")
        check_schema(d.get("spec"), SCHEMAS[key], f"{where}.spec")

    kinds = [d["kind"] for d in docs]
    for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodMonitor"):
        check(k in kinds, f"deploy/k8s: has a {k}")
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    pvcs = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}

    sidecars = 0
    for dname, dep in deployments.items():
        where = f"Deployment/{dname}"
        tpl = dep["spec"]["template"]
        labels = tpl["metadata"].get("labels", {})
        check(matches(dep["spec"]["selector"].get("matchLabels"), labels), f"{where}: selector matches the pod labels")
        spec = tpl["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                check(v["persistentVolumeClaim"]["claimName"] in pvcs, f"{where}: PVC {v['persistentVolumeClaim']['claimName']} is defined")
        ports_in_pod = [p.get("name") for c in spec["containers"] for p in c.get("ports", [])]
        check(len(ports_in_pod) == len(set(ports_in_pod)), f"{where}: container port names unique in the pod")
        for p in ports_in_pod:
            check(p and len(p) <= 15 and DNS_LABEL.match(p), f"{where}: port name '{p}' is valid")
        servers = [c for c in spec["containers"] if "adasoftmax" in c.get("image", "")]
        if not check(len(servers) == 1, f"{where}: one adasoftmax container"):
            continue
        c = servers[0]
        cw = f"{where}/{c['name']}"
        others = [o for o in spec["containers"] if o is not c]
        if others:
            sidecars += 1
            envs = " ".join(str(e.get("value", "")) for o in others for e in o.get("env", []))
            check(f"localhost:{GRPC_PORT}" in envs or f"127.0.0.1:{GRPC_PORT}" in envs,
                  f"{where}: the application container talks to adasoftmax over localhost")
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        check(ports.get("grpc") == GRPC_PORT, f"{cw}: port grpc = {GRPC_PORT}")
        check(ports.get("metrics") == METRICS_PORT, f"{cw}: port metrics = {METRICS_PORT}")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        addr = env.get("ADASOFTMAX_ADDRESS", docker["env"].get("ADASOFTMAX_ADDRESS", ""))
        maddr = env.get("ADASOFTMAX_METRICS_ADDRESS", docker["env"].get("ADASOFTMAX_METRICS_ADDRESS", ""))
        check(addr == f"0.0.0.0:{GRPC_PORT}", f"{cw}: listens on 0.0.0.0:{GRPC_PORT} (kubelet probes the pod IP)")
        check(maddr == f"0.0.0.0:{METRICS_PORT}", f"{cw}: metrics on 0.0.0.0:{METRICS_PORT}")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            p = c.get(probe)
            if check(p is not None, f"{cw}: has a {probe}"):
                check(set(p) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, f"{cw}: {probe} is a native gRPC probe")
                check(p.get("grpc", {}).get("port") in (GRPC_PORT, "grpc"), f"{cw}: {probe} on the gRPC port")
        res = c.get("resources", {})
        req, lim = res.get("requests", {}), res.get("limits", {})
        for r in ("cpu", "memory"):
            check(r in req, f"{cw}: requests {r}")
        check("memory" in lim, f"{cw}: limits memory")
        for r in set(req) & set(lim):
            check(parse_quantity(req[r]) <= parse_quantity(lim[r]), f"{cw}: {r} request <= limit")
        threads = [a for a in c.get("args", []) if a.startswith("--threads=")]
        if check(len(threads) == 1, f"{cw}: sets --threads (the default follows the node's cores)"):
            thread_count = int(threads[0].split("=")[1])
            if "cpu" in lim:
                check(parse_quantity(lim["cpu"]) >= thread_count, f"{cw}: cpu limit covers --threads")
            copies = LAYOUT_COPIES + SAMPLING_FRACTION * thread_count
            required_mem = model_bytes * copies + OVERHEAD_BYTES
            if model_bytes and "memory" in req:
                check(parse_quantity(req["memory"]) >= required_mem,
                      f"{cw}: memory request {req['memory']} >= {required_mem / 2**20:.0f}Mi "
                      f"(model bytes {model_bytes} x {copies:g} + {OVERHEAD_BYTES // 2**20}Mi)")
        sc = c.get("securityContext", {})
        check(sc.get("runAsNonRoot") is True, f"{cw}: runAsNonRoot")
        if docker["uid"] is not None:
            check(sc.get("runAsUser") == docker["uid"], f"{cw}: runAsUser = the image's USER {docker['uid']}")
        check(sc.get("allowPrivilegeEscalation") is False, f"{cw}: no privilege escalation")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        for m in mounts.values():
            check(m["name"] in volumes, f"{cw}: volume {m['name']} is declared")
        if check("/models" in mounts, f"{cw}: model repository mounted at /models"):
            check(mounts["/models"].get("readOnly") is True, f"{cw}: /models is read-only")
        args = " ".join(c.get("args", []))
        repo = env.get("ADASOFTMAX_MODEL_REPOSITORY") or (re.search(r"--model_repository[= ](\S+)", args) or [None, "/models"])[1]
        check(repo == "/models", f"{cw}: serves /models")
        cache = env.get("ADASOFTMAX_CACHE_DIR", docker["env"].get("ADASOFTMAX_CACHE_DIR"))
        if sc.get("readOnlyRootFilesystem"):
            check(cache in mounts, f"{cw}: read-only root, so the cache dir {cache} is a volume")
            check("/tmp" in mounts, f"{cw}: read-only root, so /tmp is a volume")
        grace = re.search(r"--shutdown_grace_s[= ](\d+)", args)
        if grace:
            check(spec.get("terminationGracePeriodSeconds", 30) > int(grace.group(1)),
                  f"{cw}: terminationGracePeriodSeconds > --shutdown_grace_s")
        ann = tpl["metadata"].get("annotations", {})
        check(ann.get("prometheus.io/scrape") == "true", f"{where}: prometheus.io/scrape annotation")
        check(str(ann.get("prometheus.io/port")) == str(METRICS_PORT), f"{where}: prometheus.io/port = metrics port")
    check(sidecars >= 1, "deploy/k8s: a sidecar example (application + adasoftmax in one pod)")

    for d in docs:
        kind, name = d["kind"], d["metadata"]["name"]
        if kind == "Service":
            sel = d["spec"].get("selector", {})
            targets = [(n, t) for n, t in pod_templates(docs) if matches(sel, t["metadata"].get("labels", {}))]
            if check(targets, f"Service/{name}: selects a Deployment's pods"):
                tpl = targets[0][1]
                cports = {p.get("name"): p["containerPort"] for c in tpl["spec"]["containers"] for p in c.get("ports", [])}
                for p in d["spec"]["ports"]:
                    t = p.get("targetPort", p["port"])
                    check(t in cports or t in cports.values(), f"Service/{name}: targetPort {t} exists in the pod")
        elif kind == "HorizontalPodAutoscaler":
            ref = d["spec"]["scaleTargetRef"]
            dep = deployments.get(ref["name"])
            check(ref["kind"] == "Deployment" and dep is not None, f"HPA/{name}: targets an existing Deployment")
            check(1 <= d["spec"].get("minReplicas", 1) <= d["spec"]["maxReplicas"], f"HPA/{name}: min <= max replicas")
            if dep:
                uses_cpu = any(m.get("resource", {}).get("name") == "cpu" for m in d["spec"].get("metrics", []))
                if uses_cpu:
                    check(all("cpu" in c.get("resources", {}).get("requests", {}) for c in dep["spec"]["template"]["spec"]["containers"]),
                          f"HPA/{name}: every container of the target requests cpu")
        elif kind in ("PodDisruptionBudget", "PodMonitor"):
            sel = d["spec"]["selector"].get("matchLabels", {})
            targets = [t for _, t in pod_templates(docs) if matches(sel, t["metadata"].get("labels", {}))]
            check(targets, f"{kind}/{name}: selects pods of a Deployment")
            if kind == "PodMonitor":
                for ep in d["spec"]["podMetricsEndpoints"]:
                    for t in targets:
                        names = {p.get("name") for c in t["spec"]["containers"] for p in c.get("ports", [])}
                        check(ep["port"] in names, f"PodMonitor/{name}: port {ep['port']} exists in every selected pod")

    # The sizing rule is written next to the resources.
    for f in sorted(set(files.values())):
        text = open(os.path.join(k8s_dir, f), encoding="utf-8").read()
        if "resources:" in text and "adasoftmax" in text and "containers:" in text:
            check("model bytes x (2 layout copies + 0.05 x --threads)" in text,
                  f"{f}: states the memory sizing rule")


# ------------------------------------------------------------------------------------------
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset", "inf", "nan", "le"}


def promql_series(expr):
    """Metric names referenced by a PromQL expression (a lexical approximation)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)       # strings
    e = re.sub(r"\{[^}]*\}", "", e)                     # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                    # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\$\{?\w+\}?", "", e)                   # Grafana variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        tok = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function or aggregation
        if tok.lower() in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]", tok):
            continue
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue  # exponent of a number such as 1e3
        names.add(tok)
    return names


def promql_label_names(expr):
    labels = set()
    for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    for m in re.finditer(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(1)))
    return labels


def check_server_metrics(root):
    path = os.path.join(root, "server", "metrics.cc")
    if not os.path.isfile(path):
        print("(server/metrics.cc absent: metric names from the specification only)")
        return
    names = set(re.findall(r'\.Name\("([a-z_:]+)"\)', open(path, encoding="utf-8").read()))
    for n in COUNTERS + HISTOGRAMS + GAUGES:
        check(n in names, f"server/metrics.cc registers {n}")


def check_prometheus(root, promtool):
    print("== deploy/prometheus")
    pdir = os.path.join(root, "deploy", "prometheus")
    cfg = yaml.safe_load(open(os.path.join(pdir, "prometheus.yml"), encoding="utf-8"))
    for rf in cfg.get("rule_files", []):
        check(os.path.isfile(os.path.join(pdir, rf)), f"prometheus.yml: rule file {rf} exists")
    targets = [t for sc in cfg.get("scrape_configs", []) for s in sc.get("static_configs", []) for t in s.get("targets", [])]
    check(any(t.endswith(f":{METRICS_PORT}") for t in targets), "prometheus.yml: scrapes the metrics port")

    rules = yaml.safe_load(open(os.path.join(pdir, "rules.yml"), encoding="utf-8"))
    recorded = {}
    exported = exported_series()
    for g in rules["groups"]:
        for r in g["rules"]:
            if "record" in r:
                recorded[r["record"]] = r["expr"]
    all_known = exported | set(recorded)
    for g in rules["groups"]:
        for r in g["rules"]:
            name = r.get("record") or r.get("alert")
            for s in promql_series(r["expr"]):
                check(s in all_known, f"rules.yml {name}: references known series {s}")
            used = {s for s in promql_series(r["expr"]) if s in exported}
            for lab in promql_label_names(r["expr"]):
                ok = lab == "le" or lab in {"job", "instance"} or any(
                    lab in LABELS.get(re.sub(r"_(bucket|sum|count)$", "", s), set()) for s in used) or not used
                check(ok, f"rules.yml {name}: label '{lab}' exists on the series it uses")
    spec = {  # what the deployment issue asks the recording rules to cover
        "samples per query p50": r"samples_per_query:p50", "samples per query p90": r"samples_per_query:p90",
        "samples per query p99": r"samples_per_query:p99", "mean sample fraction": r"sample_fraction:mean",
        "request rate": r"adasoftmax_requests:rate", "error ratio": r"errors:ratio",
        "batch size": r"batch_size:", "queue time": r"queue_duration_seconds:"}
    for what, pat in spec.items():
        check(any(re.search(pat, n) for n in recorded), f"rules.yml: records {what}")
    tested = open(os.path.join(pdir, "rules_test.yml"), encoding="utf-8").read() if os.path.isfile(os.path.join(pdir, "rules_test.yml")) else ""
    for n in recorded:
        if n not in tested:
            print(f"note: recorded series {n} has no promtool unit test")

    if check(promtool is not None, "promtool available (Debian package prometheus)"):
        for args in (["check", "config", "prometheus.yml"], ["check", "rules", "rules.yml"],
                     ["test", "rules", "rules_test.yml"]):
            p = subprocess.run([promtool] + args, cwd=pdir, capture_output=True, text=True)
            if p.returncode != 0:
                print(p.stdout + p.stderr)
            check(p.returncode == 0, f"promtool {' '.join(args)}")
    return recorded


def check_grafana(root, recorded):
    print("== deploy/grafana")
    gdir = os.path.join(root, "deploy", "grafana")
    dash = json.load(open(os.path.join(gdir, "dashboard.json"), encoding="utf-8"))
    panels = []

    def walk(ps):
        for p in ps:
            panels.append(p)
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    ids = [p["id"] for p in panels]
    check(len(ids) == len(set(ids)), "dashboard: panel ids unique")
    allowed_raw = set(GAUGES) | set(PROCESS)
    exprs = []
    for p in panels:
        if p.get("type") == "row":
            continue
        check("gridPos" in p, f"dashboard panel '{p.get('title')}': has gridPos")
        targets = p.get("targets", [])
        check(targets, f"dashboard panel '{p.get('title')}': has queries")
        for t in targets:
            exprs.append(t["expr"])
            for s in promql_series(t["expr"]):
                check(s in recorded or s in allowed_raw,
                      f"dashboard panel '{p['title']}': {s} is a recorded series")
    joined = "\n".join(exprs)
    for what, name in {
            "samples per query p50": "model_mode:adasoftmax_samples_per_query:p50_5m",
            "samples per query p90": "model_mode:adasoftmax_samples_per_query:p90_5m",
            "samples per query p99": "model_mode:adasoftmax_samples_per_query:p99_5m",
            "fraction of the matrix read": "model_mode:adasoftmax_sample_fraction:mean_5m",
            "latency p99": "model_mode:adasoftmax_request_duration_seconds:p99_5m",
            "batch size": "model:adasoftmax_batch_size:mean_5m",
            "QPS": "model_mode:adasoftmax_requests:rate5m",
            "errors": "model:adasoftmax_request_errors:ratio_rate5m"}.items():
        check(name in joined, f"dashboard: shows {what} ({name})")
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    for v in set(re.findall(r"\$\{?(\w+)", joined)):
        check(v in variables or v.startswith("__"), f"dashboard: variable ${v} is defined")
    for sub in ("datasources", "dashboards"):
        d = os.path.join(gdir, "provisioning", sub)
        for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            y = yaml.safe_load(open(os.path.join(d, f), encoding="utf-8"))
            check(y.get("apiVersion") == 1, f"grafana provisioning {sub}/{f}: apiVersion 1")


def check_compose(root):
    print("== deploy/compose.yaml")
    ddir = os.path.join(root, "deploy")
    c = yaml.safe_load(open(os.path.join(ddir, "compose.yaml"), encoding="utf-8"))
    services = c.get("services", {})
    for s in ("adasoftmax", "prometheus", "grafana"):
        check(s in services, f"compose: service {s}")
    a = services.get("adasoftmax", {})
    b = a.get("build", {})
    check(os.path.isfile(os.path.join(ddir, b.get("context", "."), b.get("dockerfile", "Dockerfile"))),
          "compose: adasoftmax builds the top-level Dockerfile")
    published = {str(p).split(":")[-1] for p in a.get("ports", [])}
    check({str(GRPC_PORT), str(METRICS_PORT)} <= published, "compose: publishes the gRPC and metrics ports")
    named = set(c.get("volumes", {}) or {})
    for sname, s in services.items():
        for v in s.get("volumes", []):
            src = str(v).split(":")[0]
            if src.startswith((".", "/")):
                check(os.path.exists(os.path.normpath(os.path.join(ddir, src))), f"compose {sname}: mount source {src} exists")
            else:
                check(src in named, f"compose {sname}: named volume {src} declared")
        dep = s.get("depends_on", {})
        for d in (dep if isinstance(dep, (list, dict)) else []):
            check(d in services, f"compose {sname}: depends on existing service {d}")
    cfg = yaml.safe_load(open(os.path.join(ddir, "prometheus", "prometheus.yml"), encoding="utf-8"))
    targets = [t for sc in cfg["scrape_configs"] for s in sc.get("static_configs", []) for t in s["targets"]]
    check(f"adasoftmax:{METRICS_PORT}" in targets, "compose: prometheus.yml scrapes the compose service")


def check_all_parse(root):
    print("== every YAML/JSON file under deploy/ parses")
    n = 0
    for dirpath, _, fnames in os.walk(os.path.join(root, "deploy")):
        for f in sorted(fnames):
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, root)
            try:
                if f.endswith((".yaml", ".yml")):
                    list(yaml.safe_load_all(open(p, encoding="utf-8")))
                elif f.endswith(".json"):
                    json.load(open(p, encoding="utf-8"))
                else:
                    continue
                n += 1
                check(True, rel)
            except Exception as e:  # noqa: BLE001 - report any parse error
                check(False, f"{rel}: {e}")
    check(n >= 8, f"found {n} YAML/JSON files")


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__)
        return 2
    root = os.path.abspath(args[0])
    promtool = None
    if "--promtool" in args:
        promtool = args[args.index("--promtool") + 1]
    promtool = promtool or shutil.which("promtool")
    check_all_parse(root)
    docker = check_dockerfile(root)
    model_bytes, per = default_model_bytes(root)
    if model_bytes:
        print(f"default repository: {per} -> {model_bytes} bytes of weights")
    else:
        print("(default repository not readable yet: the memory rule is checked against the manifests' comment only)")
    check_k8s(root, docker, model_bytes)
    check_server_metrics(root)
    recorded = check_prometheus(root, promtool)
    check_grafana(root, recorded)
    check_compose(root)
    print(f"{PASSES[0]} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
