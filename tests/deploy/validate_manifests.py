"""Renders every kustomize overlay in deploy/k8s and validates the result offline.

- Built-in kinds against the Kubernetes API schema of Debian's python3-kubernetes
  (field names and types at every level, required fields), plus the one newer
  field we use (Probe.grpc, Kubernetes 1.24+), checked by hand.
- The custom resources we ship (ServiceMonitor, PrometheusRule, ScaledObject)
  for the fields their controllers need.
- References inside the render: Service and PDB selectors match pods, named
  ports exist, volumes name existing PVCs and ConfigMaps, ServiceMonitors and
  the ScaledObject point at what exists, every flag passed to qaas-server and
  qaas-worker is one the binary knows, and the worker's grace period covers
  its drain.

usage: validate_manifests.py   (env: QAAS_SERVER_BIN, QAAS_WORKER_BIN; kubectl on PATH)
"""

import os
import re
import shutil
import subprocess
import sys
import unittest

import yaml

try:
    import kubernetes.client as k8s
    from kubernetes.client import ApiClient
except ImportError as e:
    raise SystemExit("validate_manifests: %s: run scripts/setup (python3-kubernetes)" % e)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OVERLAYS = os.path.join(REPO, "deploy", "k8s", "overlays")

# Fields newer than the schema python3-kubernetes carries: (model, json name) -> checker.
def _grpc_action(value, where):
    if not isinstance(value, dict) or not isinstance(value.get("port"), int):
        return ["%s: grpc needs an integer port" % where]
    unknown = set(value) - {"port", "service"}
    return ["%s: unknown grpc field(s) %s" % (where, sorted(unknown))] if unknown else []


NEWER_FIELDS = {("V1Probe", "grpc"): _grpc_action}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def model_class(api_version, kind):
    group_version = api_version.split("/")[-1]  # "apps/v1" -> "v1", "v1" -> "v1"
    name = group_version[0].upper() + group_version[1:] + kind
    return getattr(k8s, name, None)


def check_type(value, type_name, where):
    """Errors for `value` (decoded YAML) against a python3-kubernetes type string."""
    if value is None:
        return []
    if type_name == "object":  # int-or-string and free-form fields
        return []
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name]) and not (type_name != "bool" and isinstance(value, bool))
        return [] if ok else ["%s: expected %s, got %r" % (where, type_name, value)]
    if type_name == "datetime":
        return []
    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        if not isinstance(value, list):
            return ["%s: expected a list" % where]
        return [e for i, v in enumerate(value) for e in check_type(v, m.group(1), "%s[%d]" % (where, i))]
    m = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if m:
        if not isinstance(value, dict):
            return ["%s: expected a map" % where]
        return [e for k, v in value.items() for e in check_type(v, m.group(1), "%s.%s" % (where, k))]
    cls = getattr(k8s, type_name)
    if not isinstance(value, dict):
        return ["%s: expected an object (%s)" % (where, type_name)]
    by_json = {j: p for p, j in cls.attribute_map.items()}
    errors = []
    for key, v in value.items():
        if (type_name, key) in NEWER_FIELDS:
            errors += NEWER_FIELDS[(type_name, key)](v, "%s.%s" % (where, key))
        elif key not in by_json:
            errors.append("%s: unknown field '%s' (%s)" % (where, key, type_name))
        else:
            errors += check_type(v, cls.openapi_types[by_json[key]], "%s.%s" % (where, key))
    return errors


def check_required(doc, cls, where):
    """python3-kubernetes' models refuse missing required fields when built."""
    stripped = strip_newer(doc, cls.__name__)
    try:
        ApiClient()._ApiClient__deserialize(stripped, cls.__name__)
    except (ValueError, TypeError) as e:
        return ["%s: %s" % (where, e)]
    return []


def strip_newer(value, type_name):
    """`value` without the NEWER_FIELDS (which the old models cannot build)."""
    if not isinstance(value, (dict, list)) or type_name in PRIMITIVES or type_name in ("object", "datetime"):
        return value
    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        return [strip_newer(v, m.group(1)) for v in value]
    m = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if m:
        return {k: strip_newer(v, m.group(1)) for k, v in value.items()}
    cls = getattr(k8s, type_name)
    by_json = {j: p for p, j in cls.attribute_map.items()}
    out = {}
    for key, v in value.items():
        if (type_name, key) in NEWER_FIELDS:
            continue
        out[key] = strip_newer(v, cls.openapi_types[by_json[key]]) if key in by_json else v
    return out


def need(doc, path, where):
    node = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return ["%s: %s is required" % (where, path)]
        node = node[part]
    return []


def check_custom(doc, where):
    kind, spec = doc["kind"], doc.get("spec", {})
    errors = []
    if kind == "ServiceMonitor":
        errors += need(doc, "spec.selector.matchLabels", where)
        for i, ep in enumerate(spec.get("endpoints") or [None]):
            if not isinstance(ep, dict) or "port" not in ep:
                errors.append("%s: spec.endpoints[%d].port is required" % (where, i))
    elif kind == "PrometheusRule":
        for g in spec.get("groups") or [None]:
            if not isinstance(g, dict) or not g.get("name") or not g.get("rules"):
                errors.append("%s: every spec.groups[] needs a name and rules" % where)
    elif kind == "ScaledObject":
        errors += need(doc, "spec.scaleTargetRef.name", where)
        for t in spec.get("triggers") or [None]:
            if not isinstance(t, dict) or t.get("type") != "prometheus":
                errors.append("%s: triggers must be of type prometheus" % where)
                continue
            for key in ("serverAddress", "query", "threshold"):
                if not isinstance(t.get("metadata", {}).get(key), str):
                    errors.append("%s: prometheus trigger metadata.%s must be a string" % (where, key))
    else:
        errors.append("%s: no validation for kind %s" % (where, kind))
    return errors


def expand_flagfiles(container, pod_spec, configmaps, where):
    """The container's args with each --flagfile=PATH replaced by the flags of
    the ConfigMap file mounted at PATH; errors when nothing provides the file."""
    args, errors = [], []
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    for arg in container.get("args", []):
        if not arg.startswith("--flagfile="):
            args.append(arg)
            continue
        directory, name = os.path.split(arg.split("=", 1)[1])
        mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == directory), None)
        cm_name = volumes.get(mount["name"], {}).get("configMap", {}).get("name") if mount else None
        text = configmaps.get(cm_name, {}).get("data", {}).get(name)
        if text is None:
            errors.append("%s: %s: no ConfigMap file is mounted there" % (where, arg))
            continue
        args += [line for line in text.splitlines() if line.startswith("--")]
    return args, errors


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def binary_flags(binary):
    out = subprocess.run([binary, "--helpfull"], capture_output=True, text=True).stdout
    return set(re.findall(r"^\s+--([a-z_0-9]+) ", out, re.M))


def render(overlay):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise SystemExit("validate_manifests: no kubectl: run scripts/setup (Debian kubernetes-client)")
    out = subprocess.run([kubectl, "kustomize", os.path.join(OVERLAYS, overlay)], capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError("kubectl kustomize %s failed: %s" % (overlay, out.stderr))
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate(docs, server_flags, worker_flags):
    errors = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    deployments = by_kind.get("Deployment", {})
    for d in docs:
        where = "%s/%s" % (d["kind"], d["metadata"]["name"])
        cls = model_class(d["apiVersion"], d["kind"])
        if cls is not None and d["apiVersion"] in ("v1", "apps/v1", "policy/v1"):
            errors += check_type(d, cls.__name__, where)
            errors += check_required(d, cls, where)
        else:
            errors += check_custom(d, where)
        if d["metadata"].get("namespace", "qaas") != "qaas" and d["kind"] != "Namespace":
            errors.append("%s: outside namespace qaas" % where)

    for name, dep in deployments.items():
        where = "Deployment/" + name
        pod = dep["spec"]["template"]
        if not matches(dep["spec"].get("selector", {}).get("matchLabels"), pod["metadata"]["labels"]):
            errors.append("%s: selector does not match its pod labels" % where)
        spec = pod["spec"]
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            errors.append("%s: pods must run as non-root" % where)
        for vol in spec.get("volumes", []):
            if "persistentVolumeClaim" in vol:
                if vol["persistentVolumeClaim"]["claimName"] not in by_kind.get("PersistentVolumeClaim", {}):
                    errors.append("%s: volume %s names a missing PVC" % (where, vol["name"]))
            if "configMap" in vol and vol["configMap"]["name"] not in by_kind.get("ConfigMap", {}):
                errors.append("%s: volume %s names a missing ConfigMap" % (where, vol["name"]))
        volume_names = {v["name"] for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            if not re.fullmatch(r"[a-z0-9.\-]+(:[0-9]+)?/[a-z0-9/\-]+:[0-9A-Za-z.\-]+", c["image"]):
                errors.append("%s: image %s is not a registry/name:tag reference" % (where, c["image"]))
            for m in c.get("volumeMounts", []):
                if m["name"] not in volume_names:
                    errors.append("%s: mount %s has no volume" % (where, m["name"]))
            for probe_name in ("readinessProbe", "livenessProbe"):
                probe = c.get(probe_name)
                if probe is None:
                    errors.append("%s: %s missing" % (where, probe_name))
                    continue
                port = (probe.get("httpGet") or probe.get("grpc") or {}).get("port")
                if port not in ports and port not in ports.values():
                    errors.append("%s: %s port %s is not a container port" % (where, probe_name, port))
            known = server_flags if "qaas-server" in c["image"] else worker_flags
            args, flagfile_errors = expand_flagfiles(c, spec, by_kind.get("ConfigMap", {}), where)
            errors += flagfile_errors
            for arg in args:
                flag = arg[2:].split("=")[0]
                if flag not in known:
                    errors.append("%s: %s does not know the flag --%s" % (where, c["image"], flag))
            if name == "qaas-worker":
                drain = [int(a.split("=")[1]) for a in args if a.startswith("--drain_seconds=")]
                if not drain or spec.get("terminationGracePeriodSeconds", 30) <= drain[0]:
                    errors.append("%s: terminationGracePeriodSeconds must exceed --drain_seconds" % where)
                if "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}):
                    errors.append("%s: the worker must request nvidia.com/gpu" % where)

    def pods_matching(selector):
        return [d for d in deployments.values() if matches(selector, d["spec"]["template"]["metadata"]["labels"])]

    for name, svc in by_kind.get("Service", {}).items():
        targets = pods_matching(svc["spec"].get("selector", {}))
        if not targets:
            errors.append("Service/%s: selector matches no pod" % name)
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            for dep in targets:
                names = {cp.get("name") for c in dep["spec"]["template"]["spec"]["containers"] for cp in c.get("ports", [])}
                nums = {cp["containerPort"] for c in dep["spec"]["template"]["spec"]["containers"] for cp in c.get("ports", [])}
                if tp not in names and tp not in nums:
                    errors.append("Service/%s: targetPort %s is not a port of %s" % (name, tp, dep["metadata"]["name"]))
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        if not pods_matching(pdb["spec"]["selector"]["matchLabels"]):
            errors.append("PodDisruptionBudget/%s: selector matches no pod" % name)
    for name, sm in by_kind.get("ServiceMonitor", {}).items():
        svcs = [s for s in by_kind.get("Service", {}).values()
                if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
        if not svcs:
            errors.append("ServiceMonitor/%s: selects no Service" % name)
        for ep in sm["spec"]["endpoints"]:
            for s in svcs:
                if ep["port"] not in {p["name"] for p in s["spec"]["ports"]}:
                    errors.append("ServiceMonitor/%s: Service %s has no port %s" % (name, s["metadata"]["name"], ep["port"]))
    for name, so in by_kind.get("ScaledObject", {}).items():
        if so["spec"]["scaleTargetRef"]["name"] not in deployments:
            errors.append("ScaledObject/%s: no Deployment %s" % (name, so["spec"]["scaleTargetRef"]["name"]))
    return errors


class ManifestsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server_flags = binary_flags(os.environ["QAAS_SERVER_BIN"])
        cls.worker_flags = binary_flags(os.environ["QAAS_WORKER_BIN"])
        assert "embedded" in cls.server_flags and "drain_seconds" in cls.worker_flags

    def check(self, overlay, expected_kinds):
        docs = render(overlay)
        kinds = sorted({d["kind"] for d in docs})
        self.assertEqual(kinds, sorted(expected_kinds))
        self.assertEqual(validate(docs, self.server_flags, self.worker_flags), [])
        return docs

    def test_single_node(self):
        docs = self.check("single-node", ["ConfigMap", "Deployment", "Namespace", "PersistentVolumeClaim",
                                          "Service", "ServiceAccount"])
        flags = [d for d in docs if d["kind"] == "ConfigMap"][0]["data"]["server.flags"]
        self.assertIn("--embedded", flags.split())

    def test_cluster(self):
        docs = self.check("cluster", ["ConfigMap", "Deployment", "Namespace", "PersistentVolumeClaim",
                                      "PodDisruptionBudget", "PrometheusRule", "ScaledObject", "Service",
                                      "ServiceAccount", "ServiceMonitor"])
        dashboards = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get(
            "grafana_dashboard") == "1"]
        self.assertEqual(len(dashboards), 1)
        self.assertIn("qaas-dashboard.json", dashboards[0]["data"])

    def test_the_validator_catches_mistakes(self):
        docs = render("cluster")
        worker = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "qaas-worker"][0]
        container = worker["spec"]["template"]["spec"]["containers"][0]
        container["imagePullPolicy"] = 3                      # wrong type
        container["resource"] = {}                            # misspelt field
        container["args"].append("--no_such_flag=1")          # unknown flag
        container["livenessProbe"]["httpGet"]["port"] = "http"  # no such port
        worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 60
        del worker["spec"]["template"]["spec"]["containers"][0]["name"]  # required
        errors = "\n".join(validate(docs, self.server_flags, self.worker_flags))
        for expected in ["imagePullPolicy: expected str", "unknown field 'resource'", "--no_such_flag",
                         "livenessProbe port http", "must exceed --drain_seconds",
                         "Invalid value for `name`, must not be `None`"]:
            self.assertIn(expected, errors)
        # The server's flags come from the mounted ConfigMap file.
        docs = render("single-node")
        flags = [d for d in docs if d["kind"] == "ConfigMap"][0]["data"]
        flags["server.flags"] += "--bogus_flag=1\n"
        self.assertIn("does not know the flag --bogus_flag", "\n".join(validate(docs, self.server_flags, self.worker_flags)))
        server = [d for d in docs if d["kind"] == "Deployment"][0]["spec"]["template"]["spec"]["containers"][0]
        server["args"] = ["--flagfile=/etc/elsewhere/server.flags"]
        self.assertIn("no ConfigMap file is mounted there", "\n".join(validate(docs, self.server_flags, self.worker_flags)))


if __name__ == "__main__":
    unittest.main()
