"""The Kubernetes manifests in ``deploy/kubernetes``: rendered with kustomize (``kubectl
kustomize``, or a ``kustomize`` binary), validated offline against the Kubernetes schemas with
``kubernetes-validate``, and checked object by object. KEDA's ``ScaledObject`` is a custom
resource the schema bundle does not know: it is checked structurally here, and its query runs
on the real schema in PostgreSQL. Without a renderer, the validator or a PostgreSQL server the
cases that need them are skipped with the reason (``make test`` installs Debian's kubectl).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings
from service.store.models import ACTIVE_STATUSES, Job, JobStatus
from tests.postgres_support import conninfo, require_postgres, scratch_database

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = {"base": KUBE / "base", "postgres": KUBE / "overlays" / "postgres"}
WORKLOADS = ("Deployment", "StatefulSet", "Job")
DB_CLIENT = "rankopt.io/database-client"
URL_RE = re.compile(r"postgres(ql)?(\+\w+)?://", re.I)
# the trigger metadata keys of KEDA's postgresql scaler (keda.sh/docs/2.x/scalers/postgresql)
KEDA_PG_KEYS = {
    "query",
    "targetQueryValue",
    "activationTargetQueryValue",
    "connectionFromEnv",
    "host",
    "port",
    "userName",
    "passwordFromEnv",
    "dbName",
    "sslmode",
}

Doc = dict[str, Any]


def _renderer() -> list[str]:
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize")
    if kustomize is not None:
        return [kustomize, "build"]
    pytest.skip(
        "neither kubectl nor kustomize is installed (`make test` installs the Debian package "
        "`kubernetes-client` when apt-get can; it could not here)"
    )


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    """Every kustomization rendered: overlay name -> its objects."""
    command = _renderer()
    out: dict[str, list[Doc]] = {}
    for name, folder in OVERLAYS.items():
        result = subprocess.run(
            [*command, str(folder)], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        out[name] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return out


@pytest.fixture(scope="module")
def base(rendered: dict[str, list[Doc]]) -> list[Doc]:
    return rendered["base"]


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def _containers(pod: Doc) -> list[Doc]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _trigger(docs: list[Doc]) -> Doc:
    scaled = _one(docs, "ScaledObject", "rankopt-worker")
    (trigger,) = scaled["spec"]["triggers"]
    return dict(trigger)


# ---------------------------------------------------------------------- rendering and schemas
def test_overlays_render_the_same_base(rendered: dict[str, list[Doc]]) -> None:
    def names(docs: list[Doc]) -> set[tuple[str, str]]:
        return {(d["kind"], d["metadata"]["name"]) for d in docs}

    base = names(rendered["base"])
    assert {
        ("Namespace", "rankopt"),
        ("ConfigMap", "rankopt-settings"),
        ("PersistentVolumeClaim", "rankopt-artifacts"),
        ("Job", "rankopt-db-upgrade"),
        ("Deployment", "rankopt-api"),
        ("Service", "rankopt-api"),
        ("Ingress", "rankopt-api"),
        ("Deployment", "rankopt-worker"),
        ("ScaledObject", "rankopt-worker"),
        ("Deployment", "optuna-dashboard"),
        ("Service", "optuna-dashboard"),
    } <= base
    assert not any(kind in ("StatefulSet", "Secret") for kind, _ in base)  # external database
    assert names(rendered["postgres"]) - base == {
        ("StatefulSet", "rankopt-postgres"),
        ("Service", "rankopt-postgres"),
        ("NetworkPolicy", "rankopt-postgres-ingress"),
    }
    for docs in rendered.values():
        for doc in docs:
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == "rankopt", doc["metadata"]["name"]


def test_manifests_validate_against_the_kubernetes_schemas(
    rendered: dict[str, list[Doc]],
) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (the `dev` extra)"
    )
    versions = ("1.25.0", kubernetes_validate.latest_version())  # oldest bundled, newest
    checked = 0
    for docs in rendered.values():
        for doc in docs:
            if doc["apiVersion"].startswith("keda.sh/"):
                continue  # a CRD: not in the bundle (test_scaledobject_structure)
            for version in versions:
                kubernetes_validate.validate(doc, version, strict=True)
                checked += 1
    assert checked >= 2 * 28


def test_the_validator_rejects_a_broken_manifest(base: list[Doc]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (the `dev` extra)"
    )
    broken = copy.deepcopy(_one(base, "Deployment", "rankopt-api"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_scaledobject_structure(base: list[Doc]) -> None:
    """KEDA's CRD checked by hand: what KEDA 2.x reads, and that it points at our objects."""
    scaled = _one(base, "ScaledObject", "rankopt-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "idleReplicaCount",
        "advanced",
        "fallback",
        "triggers",
    }
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    worker = _one(base, "Deployment", target["name"])
    assert "replicas" not in worker["spec"]  # the HPA that KEDA creates owns the count
    assert spec["minReplicaCount"] == 0 < spec["maxReplicaCount"]
    for key in ("pollingInterval", "cooldownPeriod", "maxReplicaCount"):
        assert isinstance(spec[key], int) and spec[key] > 0
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] > 0
    trigger = _trigger(base)
    assert trigger["type"] == "postgresql"
    meta = trigger["metadata"]
    assert set(meta) <= KEDA_PG_KEYS
    assert all(isinstance(v, str) for v in meta.values())  # KEDA's metadata is string-valued
    assert float(meta["targetQueryValue"]) > 0 and float(meta["activationTargetQueryValue"]) >= 0
    # the connection string is the worker container's own (KEDA resolves its secretKeyRef)
    container = worker["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env[meta["connectionFromEnv"]]["valueFrom"]["secretKeyRef"]["name"] == "rankopt-db"


# ---------------------------------------------------------------------- what the objects say
def test_workers_request_one_gpu_and_outlast_an_epoch(base: list[Doc]) -> None:
    pod = _one(base, "Deployment", "rankopt-worker")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][0] == "worker"
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1  # extended resources: equal or absent
    # SIGTERM: finish the epoch, hand back the phase; docker-compose.yml allows 2 minutes
    assert pod["terminationGracePeriodSeconds"] >= 600
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    for name in ("rankopt-api", "optuna-dashboard"):
        other = _one(base, "Deployment", name)["spec"]["template"]["spec"]
        assert all("nvidia.com/gpu" not in str(c.get("resources")) for c in other["containers"])


def test_api_probes_and_service(base: list[Doc]) -> None:
    api = _one(base, "Deployment", "rankopt-api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["args"][:3] == ["serve", "--host", "0.0.0.0"]
    port = int(container["args"][container["args"].index("--port") + 1])
    (declared,) = container["ports"]
    assert declared == {"name": "http", "containerPort": port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = _one(base, "Service", "rankopt-api")
    assert (
        service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    )
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    ingress = _one(base, "Ingress", "rankopt-api")
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["backend"]["service"]["name"] == "rankopt-api"


def test_no_container_runs_as_root(rendered: dict[str, list[Doc]]) -> None:
    for docs in rendered.values():
        for where, pod in _pod_specs(docs):
            pod_ctx = pod.get("securityContext", {})
            assert pod.get("automountServiceAccountToken") is False, where
            for container in _containers(pod):
                ctx = {**pod_ctx, **container.get("securityContext", {})}
                what = f"{where}/{container['name']}"
                assert ctx.get("runAsNonRoot") is True, what
                assert isinstance(ctx.get("runAsUser"), int) and ctx["runAsUser"] > 0, what
                assert ctx.get("allowPrivilegeEscalation") is False, what
                assert ctx.get("capabilities", {}).get("drop") == ["ALL"], what
                # read-only root filesystem: every container gets a writable /tmp instead
                assert ctx.get("readOnlyRootFilesystem") is True, what
                mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
                assert "/tmp" in mounts, what


def test_the_database_url_comes_from_the_secret_only(rendered: dict[str, list[Doc]]) -> None:
    for docs in rendered.values():
        assert not [d for d in docs if d["kind"] == "Secret"]
        query = _trigger(docs)["metadata"]["query"]
        for doc in docs:
            for text in _strings(doc):
                assert not URL_RE.search(text) or text == query, (doc["metadata"]["name"], text)
        for where, pod in _pod_specs(docs):
            for container in _containers(pod):
                for env in container.get("env", []):
                    if "DATABASE_URL" in env["name"] or "PASSWORD" in env["name"]:
                        assert "value" not in env, f"{where}: {env['name']} inlined"
                        assert env["valueFrom"]["secretKeyRef"]["name"] == "rankopt-db"
    api = _one(rendered["base"], "Deployment", "rankopt-api")
    worker = _one(rendered["base"], "Deployment", "rankopt-worker")
    for deployment in (api, worker):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        names = [e["name"] for e in container["env"]]
        assert "RANKOPT_DATABASE_URL" in names
        assert container["envFrom"] == [{"configMapRef": {"name": "rankopt-settings"}}]


def test_settings_are_real_and_valid(base: list[Doc], monkeypatch: pytest.MonkeyPatch) -> None:
    data = _one(base, "ConfigMap", "rankopt-settings")["data"]
    fields = {f"RANKOPT_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= fields, set(data) - fields
    assert "RANKOPT_DATABASE_URL" not in data
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.dashboard_url == "http://127.0.0.1:8080"
    assert str(settings.artifact_root) == "/artifacts"


def test_artifacts_are_one_rwx_volume_at_the_same_path(base: list[Doc]) -> None:
    root = _one(base, "ConfigMap", "rankopt-settings")["data"]["RANKOPT_ARTIFACT_ROOT"]
    pvc = _one(base, "PersistentVolumeClaim", "rankopt-artifacts")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("rankopt-api", "rankopt-worker"):
        pod = _one(base, "Deployment", name)["spec"]["template"]["spec"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        (container,) = pod["containers"]
        mounts = [m for m in container["volumeMounts"] if m["name"] in claims]
        assert [(claims[m["name"]], m["mountPath"]) for m in mounts] == [
            ("rankopt-artifacts", root)
        ], name


def test_migration_job_and_dashboard(base: list[Doc]) -> None:
    job = _one(base, "Job", "rankopt-db-upgrade")
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["db", "upgrade"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    dashboard = _one(base, "Deployment", "optuna-dashboard")
    (container,) = dashboard["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("ghcr.io/optuna/optuna-dashboard")
    assert container["args"][0] == "$(RANKOPT_DATABASE_URL)"  # expanded by the kubelet
    service = _one(base, "Service", "optuna-dashboard")
    assert service["spec"]["ports"][0]["port"] == 8080
    assert not [d for d in base if d["kind"] == "Ingress" and "optuna-dashboard" in str(d["spec"])]


def test_network_policies(rendered: dict[str, list[Doc]]) -> None:
    base = rendered["base"]
    policies = {d["metadata"]["name"]: d["spec"] for d in base if d["kind"] == "NetworkPolicy"}
    deny = policies["rankopt-default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    # the database clients: the API and the workers, plus the migration Job and the dashboard
    clients = {
        where
        for where, _ in _pod_specs(base)
        for doc in base
        if f"{doc['kind']}/{doc['metadata']['name']}" == where
        and doc["spec"]["template"]["metadata"]["labels"].get(DB_CLIENT) == "true"
    }
    assert clients == {
        "Deployment/rankopt-api",
        "Deployment/rankopt-worker",
        "Job/rankopt-db-upgrade",
        "Deployment/optuna-dashboard",
    }
    egress = policies["rankopt-database-egress"]
    assert egress["podSelector"] == {"matchLabels": {DB_CLIENT: "true"}}
    assert [p["port"] for rule in egress["egress"] for p in rule["ports"]] == [5432]
    api = policies["rankopt-api-ingress"]
    (rule,) = api["ingress"]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    # no other policy admits traffic to any pod
    admitting = {n for n, s in policies.items() if s.get("ingress")}
    assert admitting == {"rankopt-api-ingress"}
    pg = _one(rendered["postgres"], "NetworkPolicy", "rankopt-postgres-ingress")["spec"]
    (rule,) = pg["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5432}]
    assert rule["from"][0] == {"podSelector": {"matchLabels": {DB_CLIENT: "true"}}}
    assert rule["from"][1]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "keda"
    }


def test_postgres_overlay_reads_its_password_from_the_secret(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["postgres"]
    statefulset = _one(docs, "StatefulSet", "rankopt-postgres")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("postgres:16")
    env = {e["name"]: e for e in container["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "rankopt-db",
        "key": "postgres-password",
    }
    assert "pg_isready" in container["readinessProbe"]["exec"]["command"]
    service = _one(docs, "Service", "rankopt-postgres")
    assert service["spec"]["ports"][0]["port"] == 5432


# ---------------------------------------------------------------------- the scaler's query
def _source_query() -> str:
    """The query as written in the base (read without a renderer)."""
    text = (KUBE / "base" / "worker-scaledobject.yaml").read_text()
    return str(_trigger([yaml.safe_load(text)])["metadata"]["query"])


def test_scaler_query_names_our_table_and_statuses() -> None:
    query = _source_query()
    assert re.search(rf"\bFROM {Job.__tablename__}\b", query)
    (listed,) = re.findall(r"status IN \(([^)]*)\)", query)
    statuses = {s.strip().strip("'") for s in listed.split(",")}
    assert statuses == {s.value for s in ACTIVE_STATUSES | {JobStatus.CANCELLING}}


def test_scaler_query_runs_on_the_real_schema() -> None:
    """KEDA's query on a database migrated by the store: workers wanted per job status."""
    require_postgres()
    import psycopg

    from service.store import Store

    query = _source_query()
    # (status, trials_total, trials_done) -> workers it can use
    jobs = [
        ("QUEUED", 40, 0, 1),
        ("PREPARING", 40, 0, 1),
        ("SEARCHING", 10, 3, 7),
        ("SEARCHING", 5, 5, 1),  # budget spent, the last trial finishing: finalize is next
        ("FINALIZING", 5, 5, 1),
        ("CANCELLING", 20, 2, 1),
        ("SUCCEEDED", 20, 20, 0),
        ("FAILED", 20, 1, 0),
        ("CANCELLED", 20, 4, 0),
    ]
    with scratch_database("rankopt_k8s") as url:
        store = Store.open(url)  # creates the tables with the store's migrations
        try:
            with psycopg.connect(conninfo(url), autocommit=True) as conn:
                assert conn.execute(query).fetchone() == (0,)
                _, owner = store.create_api_key("keda")
                for status, total, done, _ in jobs:
                    job = store.create_job(owner.id, {}, "w.safetensors", trials_total=total)
                    conn.execute(
                        "UPDATE rankopt_jobs SET status = %s, trials_done = %s WHERE id = %s",
                        (status, done, job.id),
                    )
                (value,) = conn.execute(query).fetchone() or (None,)
                assert isinstance(value, int)  # KEDA needs a number
                assert value == sum(want for *_, want in jobs) == 12
                plan = conn.execute("EXPLAIN " + query).fetchall()
                assert plan
        finally:
            store.dispose()
