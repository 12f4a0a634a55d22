#!/usr/bin/env python3
"""Offline checks of rendered Kubernetes manifests (the output of `kubectl kustomize`).

1. Schema: every built-in object against the Kubernetes OpenAPI JSON schemas shipped by the
   PyPI package kubernetes-validate (strict: unknown fields are errors), for each version
   given with --k8s-version. KEDA objects (keda.sh/*) against the models that PyPI's
   cloudcoil-models-keda generates from KEDA's CRDs, plus an unknown-field check (those
   models silently ignore extra fields, so anything they drop is reported).
2. Consistency: every name an object refers to (ConfigMaps, Secrets, ServiceAccounts,
   Services, autoscaler targets, selectors, named ports) exists in the same render.
3. Policy: the hardening, probes and shutdown timing that issue #5 asks for (for ingress,
   proxy and every forwarding proxy `proxy-<queue>`).
4. Forwarding and Redis users: every service logs in as an ACL user that the rendered
   redis-users.acl defines, granted the streams of its queues, with its password key in
   Secret redis-auth; each ROUTES queue has a proxy with that QUEUE (and no REQUEST_STREAM)
   whose UPSTREAM_URL names a Service of the render when it is in the render's namespaces;
   each redis-streams ScaledObject watches the stream its target reads, readable by the KEDA
   user.

Usage: validate_k8s.py RENDERED.yaml [--k8s-version 1.30.0 ...] [--label NAME]
                      [--external-secret NAME ...]   (Secrets created outside the render)
Prints one line per problem and a summary; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter

import yaml

APP_SERVICES = ("ingress", "proxy")
APP_NAMESPACE = "redis-stream-demo"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


def load(path: str) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def ident(obj: dict) -> str:
    meta = obj.get("metadata", {})
    ns = meta.get("namespace", "")
    return f"{obj.get('kind')}/{ns + '/' if ns else ''}{meta.get('name')}"


# --------------------------------------------------------------------------------------------
# 1. Schemas


def check_builtin_schema(obj: dict, versions: list[str], errors: list[str]) -> None:
    import kubernetes_validate

    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(root)"
            errors.append(f"{ident(obj)}: k8s {e.version} schema: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{ident(obj)}: no Kubernetes {version} schema: {e.message}")


def dropped_fields(given, dumped, path="") -> list[str]:
    """Keys present in `given` but missing from the model's dump: unknown to the schema."""
    out = []
    if isinstance(given, dict) and isinstance(dumped, dict):
        for key, value in given.items():
            if key not in dumped:
                out.append(f"{path}.{key}".lstrip("."))
            else:
                out.extend(dropped_fields(value, dumped[key], f"{path}.{key}"))
    elif isinstance(given, list) and isinstance(dumped, list):
        for i, (a, b) in enumerate(zip(given, dumped)):
            out.extend(dropped_fields(a, b, f"{path}[{i}]"))
    return out


def check_keda_schema(obj: dict, errors: list[str]) -> str:
    from importlib.metadata import version

    import pydantic
    from cloudcoil.models.keda import v1alpha1 as keda

    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    model = getattr(keda, kind, None) if api_version == "keda.sh/v1alpha1" else None
    if model is None:
        errors.append(f"{ident(obj)}: no KEDA model for {api_version} {kind}")
        return ""
    try:
        parsed = model.model_validate(obj)
    except pydantic.ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            errors.append(f"{ident(obj)}: KEDA schema: {loc}: {err['msg']}")
        return ""
    dumped = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    for field in dropped_fields(obj, dumped):
        errors.append(f"{ident(obj)}: KEDA schema: unknown field {field}")
    return version("cloudcoil.models.keda")


# --------------------------------------------------------------------------------------------
# 2. References


def pod_spec(obj: dict) -> dict | None:
    if obj.get("kind") in WORKLOAD_KINDS:
        return obj["spec"]["template"]["spec"]
    return None


def pod_labels(obj: dict) -> dict:
    return obj["spec"]["template"]["metadata"].get("labels", {})


def selector_matches(selector: dict, labels: dict) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def check_references(objs: list[dict], errors: list[str], external_secrets: tuple[str, ...] = ()) -> int:
    names = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objs}
    # Secrets the operator creates outside the render (e.g. TLS certificates): present in
    # every namespace of the render.
    names |= {("Secret", o["metadata"]["name"], secret) for o in objs if o["kind"] == "Namespace"
              for secret in external_secrets}
    namespaces = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}
    workloads = [o for o in objs if o["kind"] in WORKLOAD_KINDS]
    checked = 0

    def need(kind, ns, name, what):
        nonlocal checked
        checked += 1
        if (kind, ns, name) not in names:
            errors.append(f"{what}: refers to {kind} {ns}/{name}, which is not in the render")

    for o in objs:
        ns = o["metadata"].get("namespace", "")
        if o["kind"] != "Namespace" and ns and ns not in namespaces:
            errors.append(f"{ident(o)}: namespace {ns} is not created by the render")
        spec = pod_spec(o)
        if spec is not None:
            if spec.get("serviceAccountName"):
                need("ServiceAccount", ns, spec["serviceAccountName"], ident(o))
            for vol in spec.get("volumes", []):
                if "configMap" in vol:
                    need("ConfigMap", ns, vol["configMap"]["name"], ident(o))
                if "secret" in vol:
                    need("Secret", ns, vol["secret"]["secretName"], ident(o))
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                for src in c.get("envFrom", []):
                    if "configMapRef" in src:
                        need("ConfigMap", ns, src["configMapRef"]["name"], ident(o))
                    if "secretRef" in src:
                        need("Secret", ns, src["secretRef"]["name"], ident(o))
                for env in c.get("env", []):
                    ref = env.get("valueFrom", {})
                    if "secretKeyRef" in ref:
                        need("Secret", ns, ref["secretKeyRef"]["name"], ident(o))
                    if "configMapKeyRef" in ref:
                        need("ConfigMap", ns, ref["configMapKeyRef"]["name"], ident(o))
            if o["kind"] == "StatefulSet":
                need("Service", ns, o["spec"]["serviceName"], ident(o))
        if o["kind"] == "Service" and o["spec"].get("selector"):
            matches = [w for w in workloads if w["metadata"].get("namespace", "") == ns
                       and selector_matches({"matchLabels": o["spec"]["selector"]}, pod_labels(w))]
            checked += 1
            if not matches:
                errors.append(f"{ident(o)}: selector matches no workload")
            for port in o["spec"].get("ports", []):
                target = port.get("targetPort")
                if isinstance(target, str):
                    for w in matches:
                        port_names = {p.get("name") for c in pod_spec(w)["containers"] for p in c.get("ports", [])}
                        checked += 1
                        if target not in port_names:
                            errors.append(f"{ident(o)}: targetPort {target} is not a port of {ident(w)}")
        if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            ref = o["spec"]["scaleTargetRef"]
            need(ref.get("kind", "Deployment"), ns, ref["name"], ident(o))
        if o["kind"] == "ScaledObject":
            for trig in o["spec"].get("triggers", []):
                if "authenticationRef" in trig:
                    need(trig["authenticationRef"].get("kind", "TriggerAuthentication"), ns,
                         trig["authenticationRef"]["name"], ident(o))
        if o["kind"] == "TriggerAuthentication":
            for ref in o["spec"].get("secretTargetRef", []):
                need("Secret", ns, ref["name"], ident(o))
        if o["kind"] in ("PodDisruptionBudget", "NetworkPolicy"):
            sel = o["spec"].get("selector") if o["kind"] == "PodDisruptionBudget" else o["spec"].get("podSelector")
            if sel:  # an empty podSelector means every pod of the namespace
                checked += 1
                if not any(w["metadata"].get("namespace", "") == ns and selector_matches(sel, pod_labels(w))
                           for w in workloads):
                    errors.append(f"{ident(o)}: selector matches no workload")
        if o["kind"] == "Ingress":
            for rule in o["spec"].get("rules", []):
                for p in rule.get("http", {}).get("paths", []):
                    svc = p["backend"]["service"]
                    need("Service", ns, svc["name"], ident(o))
                    port_name = svc["port"].get("name")
                    for s in objs:
                        if s["kind"] == "Service" and s["metadata"]["name"] == svc["name"] \
                                and s["metadata"].get("namespace", "") == ns and port_name:
                            checked += 1
                            if port_name not in {sp.get("name") for sp in s["spec"]["ports"]}:
                                errors.append(f"{ident(o)}: Service {svc['name']} has no port {port_name}")
        if o["kind"] == "RoleBinding":
            need(o["roleRef"]["kind"], ns if o["roleRef"]["kind"] == "Role" else "", o["roleRef"]["name"], ident(o))
            for subj in o.get("subjects", []):
                if subj["kind"] == "ServiceAccount":
                    need("ServiceAccount", subj.get("namespace", ns), subj["name"], ident(o))
    return checked


# --------------------------------------------------------------------------------------------
# 3. Policy


def duration_seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", str(text).strip())
    if not m:
        raise ValueError(f"cannot read duration {text!r}")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value / 1000 if unit == "ms" else value * 60 if unit == "m" else value


def check_policy(objs: list[dict], errors: list[str]) -> int:
    checked = 0

    def expect(cond, msg):
        nonlocal checked
        checked += 1
        if not cond:
            errors.append(msg)

    config = next((o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"
                   and o["metadata"]["name"] == "app-config"), None)
    expect(config is not None, "ConfigMap app-config is missing")
    config = config or {}
    scaled = {(o["metadata"].get("namespace", ""), o["spec"]["scaleTargetRef"]["name"])
              for o in objs if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")}

    for o in objs:
        spec = pod_spec(o)
        if spec is None:
            continue
        who = ident(o)
        ns = o["metadata"].get("namespace", "")
        psc = spec.get("securityContext", {})
        expect(psc.get("runAsNonRoot") is True, f"{who}: pod securityContext.runAsNonRoot must be true")
        expect(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
               f"{who}: pod seccompProfile must be RuntimeDefault")
        for c in spec["containers"]:
            cw = f"{who} container {c['name']}"
            sc = c.get("securityContext", {})
            expect(sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation must be false")
            expect(sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem must be true")
            expect("ALL" in sc.get("capabilities", {}).get("drop", []), f"{cw}: capabilities must drop ALL")
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    expect(r in res.get(kind, {}), f"{cw}: resources.{kind}.{r} missing")
            expect("livenessProbe" in c and "readinessProbe" in c, f"{cw}: liveness and readiness probes required")
            image = c["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            expect(image.startswith("redis-stream-demo/") or (tag and tag != "latest") or "@sha256:" in image,
                   f"{cw}: third-party image {image} must be pinned to a version tag")

        name = o["metadata"]["name"]
        if not is_app_service(name) or ns != APP_NAMESPACE:
            continue
        c = spec["containers"][0]
        env = c.get("env", [])
        env_names = [e["name"] for e in env]
        expect(psc.get("runAsUser") == 10001, f"{who}: runAsUser must be 10001 (the image's user)")
        expect(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/health/live",
               f"{who}: livenessProbe must GET /health/live")
        expect(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/health/ready",
               f"{who}: readinessProbe must GET /health/ready")
        pre = c.get("lifecycle", {}).get("preStop", {})
        pre_sleep = 0.0
        if "exec" in pre:
            cmd = pre["exec"]["command"]
            expect(cmd[0] == "sleep" and len(cmd) == 2, f"{who}: preStop should be [sleep, N]")
            pre_sleep = duration_seconds(cmd[-1])
        elif "sleep" in pre:
            pre_sleep = float(pre["sleep"]["seconds"])
        expect(pre_sleep > 0, f"{who}: preStop sleep missing")
        drain = duration_seconds(config.get("DRAIN_TIMEOUT", "25s"))
        grace = spec.get("terminationGracePeriodSeconds", 30)
        expect(grace > pre_sleep + drain,
               f"{who}: terminationGracePeriodSeconds {grace} must exceed preStop {pre_sleep}s + DRAIN_TIMEOUT {drain}s")
        check_redis_secrets(who, spec, c, errors)
        ann = o["spec"]["template"]["metadata"].get("annotations", {})
        port = next((p["containerPort"] for p in c.get("ports", []) if p.get("name") == "http"), None)
        expect(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(port),
               f"{who}: prometheus.io/scrape and prometheus.io/port ({port}) annotations required")
        listen = next((e.get("value", "") for e in env if e["name"] == "LISTEN_ADDR"), "")
        expect(listen.endswith(f":{port}"), f"{who}: LISTEN_ADDR {listen!r} does not match container port {port}")
        if (ns, name) in scaled:
            expect("replicas" not in o["spec"],
                   f"{who}: has spec.replicas although an autoscaler owns the count")
        if name == "ingress":
            expect(any(e["name"] == "INSTANCE_ID" and e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
                       == "metadata.name" for e in env), f"{who}: INSTANCE_ID must come from metadata.name")
    return checked


def is_app_service(name: str) -> bool:
    """ingress, proxy, and forwarding proxies named proxy-<queue> (k8s/examples/forwarding/)."""
    return name in APP_SERVICES or name.startswith("proxy-")


def resolved_env(objs: list[dict], ns: str, c: dict) -> dict[str, str]:
    """A container's environment: its envFrom ConfigMaps, then its env values on top."""
    out: dict[str, str] = {}
    for src in c.get("envFrom", []):
        ref = src.get("configMapRef", {}).get("name")
        for o in objs:
            if o["kind"] == "ConfigMap" and o["metadata"]["name"] == ref and o["metadata"].get("namespace", "") == ns:
                out.update(o.get("data", {}))
    for e in c.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
    return out


def check_forwarding(objs: list[dict], errors: list[str]) -> int:
    checked = 0

    def expect(cond, msg):
        nonlocal checked
        checked += 1
        if not cond:
            errors.append(msg)

    acl_map = next((o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"
                    and o["metadata"]["name"].startswith("redis-acl")), {})
    users = {}
    for line in acl_map.get("redis-users.acl", "").splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0] == "user":
            users[parts[1]] = (parts[2] if len(parts) > 2 else "").split()
    secret = next((o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == "redis-auth"), {})
    secret_keys = set(secret.get("data", {})) | set(secret.get("stringData", {}))
    namespaces = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}
    services = {(o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objs if o["kind"] == "Service"}
    served: dict[str, str] = {}   # queue -> workload
    streams_of: dict[str, str] = {}   # workload -> request stream
    routed: list[tuple[str, str]] = []
    for o in objs:
        spec = pod_spec(o)
        name, ns = o["metadata"]["name"], o["metadata"].get("namespace", "")
        if spec is None or ns != APP_NAMESPACE or not is_app_service(name):
            continue
        who = ident(o)
        c = spec["containers"][0]
        env = resolved_env(objs, ns, c)
        m = re.match(r"rediss?://([^:/@]+)@", env.get("REDIS_URL", ""))
        user = m.group(1) if m else ""
        expect(user in users, f"{who}: Redis ACL user {user!r} has no line in redis-users.acl")
        items = [i["key"] for v in spec.get("volumes", []) if v.get("secret", {}).get("secretName") == "redis-auth"
                 for i in v["secret"].get("items", [])]
        expect(items == [f"{user}-password"], f"{who}: mounts {items} of Secret redis-auth, expected [{user}-password]")
        expect(f"{user}-password" in secret_keys, f"{who}: Secret redis-auth has no key {user}-password")
        queues = []
        if "QUEUE" in env:
            queue = env["QUEUE"]
            queues.append(queue)
            served[queue] = name
            streams_of[name] = f"{queue}-requests"
            expect("REQUEST_STREAM" not in env, f"{who}: QUEUE and REQUEST_STREAM together are refused (envFrom included)")
            expect(not env.get("DEAD_LETTER_STREAM", f"{queue}-requests:dlq").startswith("weather-"),
                   f"{who}: DEAD_LETTER_STREAM of queue {queue} is the weather one")
            up = re.match(r"https?://([^:/]+)", env.get("UPSTREAM_URL", ""))
            expect(up is not None, f"{who}: QUEUE without an http:// UPSTREAM_URL")
            if up:
                host = up.group(1).split(".")
                svc_ns = host[1] if len(host) > 1 else ns
                if svc_ns in namespaces:
                    expect((svc_ns, host[0]) in services, f"{who}: UPSTREAM_URL names Service {svc_ns}/{host[0]}, not in the render")
        else:
            streams_of[name] = env.get("REQUEST_STREAM", "weather-requests")
        for pair in filter(None, env.get("ROUTES", "").split(",")):
            queue = pair.partition("=")[2].strip()
            queues.append(queue)
            routed.append((who, queue))
        for queue in queues:
            expect(f"~{queue}-requests" in users.get(user, []),
                   f"{who}: ACL user {user} is not granted ~{queue}-requests (--print-redis-acl with this configuration)")
    for who, queue in routed:
        expect(queue in served, f"{who}: ROUTES queue {queue!r} has no proxy with QUEUE={queue}")
    monitor = users.get("monitor", [])
    for o in objs:
        if o["kind"] != "ScaledObject":
            continue
        target = o["spec"]["scaleTargetRef"]["name"]
        for trig in o["spec"].get("triggers", []):
            if trig.get("type") != "redis-streams" or target not in streams_of:
                continue
            stream = trig.get("metadata", {}).get("stream")
            expect(stream == streams_of[target], f"{ident(o)}: watches {stream}, but {target} reads {streams_of[target]}")
            expect(f"%R~{stream}" in monitor or f"~{stream}" in monitor,
                   f"{ident(o)}: ACL user monitor (KEDA) may not read {stream}")
    return checked


def check_redis_secrets(who: str, spec: dict, c: dict, errors: list[str]) -> None:
    """The services get the Redis password and TLS files as mounted Secret files, never as
    environment values: REDIS_URL carries no password, no variable comes from a Secret, and
    every *_FILE setting points into a volume mounted from a Secret (redis-auth for the
    password). A rediss:// URL needs the CA file unless the system trust store is meant."""
    def expect(ok, message):
        if not ok:
            errors.append(message)

    env = {e["name"]: e for e in c.get("env", [])}
    values = {name: e.get("value", "") for name, e in env.items()}
    url = values.get("REDIS_URL", "")
    expect(url.startswith(("redis://", "rediss://")), f"{who}: REDIS_URL must be set to a redis:// or rediss:// URL")
    expect(not re.search(r"://[^/@]*:[^/@]*@", url),
           f"{who}: REDIS_URL must not carry a password; mount it and set REDIS_PASSWORD_FILE")
    expect(bool(re.match(r"rediss?://[^:/@]+@", url)),
           f"{who}: REDIS_URL must name the service's Redis ACL user (redis://<user>@host; the default user is off)")
    for name, e in env.items():
        expect("secretKeyRef" not in e.get("valueFrom", {}),
               f"{who}: {name} takes a Secret value into the environment; mount the Secret and use a *_FILE setting")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = [(m["mountPath"].rstrip("/") + "/", m["name"]) for m in c.get("volumeMounts", [])]

    def secret_of(path: str) -> str | None:
        for prefix, volume in mounts:
            if path.startswith(prefix):
                return volumes.get(volume, {}).get("secret", {}).get("secretName")
        return None

    expect("REDIS_PASSWORD_FILE" in values, f"{who}: REDIS_PASSWORD_FILE must be set (Redis requires a password)")
    for name, path in values.items():
        if name.startswith("REDIS_") and name.endswith("_FILE"):
            expect(secret_of(path) is not None, f"{who}: {name}={path} is not in a volume mounted from a Secret")
    if "REDIS_PASSWORD_FILE" in values:
        expect(secret_of(values["REDIS_PASSWORD_FILE"]) == "redis-auth",
               f"{who}: REDIS_PASSWORD_FILE must come from Secret redis-auth")
    if url.startswith("rediss://"):
        expect("REDIS_TLS_CA_FILE" in values, f"{who}: rediss:// without REDIS_TLS_CA_FILE trusts only public CAs")
    has_cert, has_key = "REDIS_TLS_CERT_FILE" in values, "REDIS_TLS_KEY_FILE" in values
    expect(has_cert == has_key, f"{who}: REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together")


# --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("--k8s-version", action="append", default=[])
    ap.add_argument("--label", default="")
    ap.add_argument("--external-secret", action="append", default=[],
                    help="a Secret created outside the render (may be repeated)")
    args = ap.parse_args()
    versions = args.k8s_version or ["1.30.0"]
    label = args.label or args.rendered

    objs = load(args.rendered)
    errors: list[str] = []
    kinds = Counter()
    builtin = keda = 0
    keda_version = ""
    for obj in objs:
        kinds[obj.get("kind")] += 1
        if str(obj.get("apiVersion", "")).startswith("keda.sh/"):
            keda_version = check_keda_schema(obj, errors) or keda_version
            keda += 1
        else:
            check_builtin_schema(obj, versions, errors)
            builtin += 1
    refs = check_references(objs, errors, tuple(args.external_secret))
    policies = check_policy(objs, errors) + check_forwarding(objs, errors)

    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"  {label}: {len(objs)} objects ({summary})")
    print(f"  schema: {builtin} built-in objects x Kubernetes {', '.join(versions)} (strict)"
          + (f"; {keda} KEDA objects against cloudcoil-models-keda {keda_version} (KEDA CRD models)" if keda else ""))
    print(f"  consistency: {refs} references checked; policy: {policies} checks")
    for e in errors:
        print(f"  ERROR {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
