"""The Helm chart, validated offline: lint, render, schema-check every object, and keep
the chart, the local Serve config, the topics, the alert rules and the dashboard in step
with what the code exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from vlm_core.config import Topics
from vlm_core.metrics import ALL_METRICS, Kind
from vlm_core.pipeline import PipelineConfig

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "vlm-stream"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
# The KubeRay / Strimzi / Prometheus Operator CRD schemas live beside the repository.
SCHEMAS = Path(os.environ.get("VLM_K8S_SCHEMAS", Path(__file__).parent / "crd-schemas"))
KUBERNETES_VERSION = "1.31.0"
CUSTOM_SCHEMAS = {
    ("ray.io/v1", "RayService"): "kuberay-rayservice_v1.json",
    ("ray.io/v1", "RayJob"): "kuberay-rayjob_v1.json",
    ("ray.io/v1", "RayCluster"): "kuberay-raycluster_v1.json",
    ("kafka.strimzi.io/v1beta2", "Kafka"): "strimzi-kafka_v1beta2.json",
    ("kafka.strimzi.io/v1beta2", "KafkaNodePool"): "strimzi-kafkanodepool_v1beta2.json",
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): "strimzi-kafkatopic_v1beta2.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator-servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "prometheus-operator-podmonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheus-operator-prometheusrule_v1.json",
}


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not on PATH: `make test` installs it (deploy/local/install-tools.sh)"
    return path


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("helm"), *args], capture_output=True, text=True, timeout=120)


def render(*value_files: Path) -> list[dict[str, Any]]:
    args = ["template", "vlm", str(CHART), "--namespace", "vision"]
    for f in value_files:
        args += ["-f", str(f)]
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=["default", "full"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render() if request.param == "default" else render(FULL_VALUES)


def test_helm_lint_strict() -> None:
    for values in ([], ["-f", str(FULL_VALUES)]):
        result = helm("lint", "--strict", str(CHART), *values)
        assert result.returncode == 0, result.stdout + result.stderr


def test_full_values_render_everything() -> None:
    kinds = sorted({d["kind"] for d in render(FULL_VALUES)})
    for kind in ("RayService", "RayJob", "CronJob", "Kafka", "KafkaNodePool", "KafkaTopic", "PrometheusRule"):
        assert kind in kinds
    docs = render(FULL_VALUES)
    ingest = [
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["labels"]["app.kubernetes.io/component"] == "ingest"
    ]
    assert sorted(d["metadata"]["name"] for d in ingest) == [
        "vlm-vlm-stream-ingest-entrance",
        "vlm-vlm-stream-ingest-warehouse",
    ]
    service = next(d for d in docs if d["kind"] == "RayService")
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1" and gpu["image"].endswith("-cuda")
    topics = sorted(d["spec"]["topicName"] for d in docs if d["kind"] == "KafkaTopic")
    assert topics == sorted(Topics().model_dump().values())


def test_the_view_is_optional_and_reads_its_token_from_a_secret() -> None:
    assert not [d for d in render() if d["metadata"]["name"].endswith("-view")]
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render(FULL_VALUES)}
    view = docs[("Deployment", "vlm-vlm-stream-view")]["spec"]["template"]["spec"]["containers"][0]
    assert view["args"][:3] == ["view", "--host", "0.0.0.0"]
    token = next(e for e in view["env"] if e["name"] == "VLM_VIEW_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "vlm-view-token", "key": "token"}
    pipeline = yaml.safe_load(docs[("ConfigMap", "vlm-vlm-stream-view")]["data"]["pipeline.yaml"])
    service = yaml.safe_load(docs[("RayService", "vlm-vlm-stream")]["spec"]["serveConfigV2"])
    assert pipeline == service  # the view draws the zones and lines the pipeline counts
    assert docs[("Service", "vlm-vlm-stream-view")]["spec"]["ports"][0]["targetPort"] == "http"
    result = helm("template", "vlm", str(CHART), "--set", "view.enabled=true")
    assert result.returncode != 0 and "view.tokenSecret is required" in result.stderr


def test_each_component_logs_in_to_kafka_as_its_own_principal(tmp_path: Path) -> None:
    values = tmp_path / "sasl.yaml"
    values.write_text(
        "kafka:\n  external:\n    securityProtocol: SASL_SSL\n"
        "    sasl: {secretName: kafka-shared, secrets: {ingest: kafka-ingest, ray: kafka-processor}}\n"
        "    tls: {secretName: kafka-ca}\n"
        "view: {enabled: true, tokenSecret: vlm-view-token}\n"
    )
    users: dict[str, set[str]] = {}
    for doc in render(values):
        text = yaml.safe_dump(doc)
        if "VLM_KAFKA_SASL_USERNAME" not in text:
            continue
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        for container in _containers(doc):
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["VLM_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
            assert env["VLM_KAFKA_SSL_CAFILE"]["value"] == "/etc/vlm-stream/kafka-tls/ca.crt"
            secret = env["VLM_KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"]["name"]
            assert env["VLM_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == secret
            users.setdefault(component, set()).add(secret)
    assert users["ingest"] == {"kafka-ingest"} and users["view"] == {"kafka-shared"}
    assert {"kafka-processor"} == users["inference"]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container of a rendered object, however deep its pod templates sit."""
    found: list[dict[str, Any]] = []
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found.extend(c for c in node.get("containers", []) if isinstance(c, dict))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def test_optional_applications_can_be_left_out_and_their_cameras_go_back(tmp_path: Path) -> None:
    values = tmp_path / "no-optional.yaml"
    values.write_text("serve:\n  optionalApplications: false\n")
    service = next(d for d in render(values) if d["kind"] == "RayService")
    apps = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert [a["name"] for a in apps] == ["vlm"]
    overrides = apps[0]["args"]["cameras"]["overrides"]
    assert "vtest" not in overrides and "synthetic-0" in overrides
    default = next(d for d in render() if d["kind"] == "RayService")
    names = [a["name"] for a in yaml.safe_load(default["spec"]["serveConfigV2"])["applications"]]
    assert names == ["vlm", "vlm-coco"]


def test_core_objects_pass_kubernetes_validate(rendered: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    core = [d for d in rendered if (d["apiVersion"], d["kind"]) not in CUSTOM_SCHEMAS]
    assert core, "the chart renders core objects"
    for doc in core:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_custom_resources_match_their_crd_schemas(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    assert SCHEMAS.is_dir(), f"CRD schemas not found in {SCHEMAS}: set VLM_K8S_SCHEMAS to the k8s-schemas directory"
    custom = [d for d in rendered if (d["apiVersion"], d["kind"]) in CUSTOM_SCHEMAS]
    assert custom
    for i, doc in enumerate(custom):
        instance = tmp_path / f"{i}-{doc['kind']}.json"
        instance.write_text(json.dumps(doc))
        schema = python_regex_schema(SCHEMAS / CUSTOM_SCHEMAS[(doc["apiVersion"], doc["kind"])], tmp_path)
        result = subprocess.run(
            [_tool("check-jsonschema"), "--regex-variant", "python", "--schemafile", str(schema), str(instance)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"{doc['kind']} {doc['metadata']['name']}: {result.stdout}{result.stderr}"


def python_regex_schema(schema: Path, tmp_path: Path) -> Path:
    """The schema with Go-style inline regex flags (``^(?i)(abort|warn)?$`` in Prometheus
    Operator's CRDs) moved to the front, where Python's ``re`` (``--regex-variant python``)
    accepts them with the same meaning; the shared schema files themselves are read-only."""
    text = schema.read_text()
    if "(?i)" not in text:
        return schema

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: ("(?i)" + v.replace("(?i)", "") if k == "pattern" and isinstance(v, str) and "(?i)" in v else fix(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    fixed = tmp_path / f"python-regex-{schema.name}"
    fixed.write_text(json.dumps(fix(json.loads(text))))
    return fixed


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("bad-values-type.yaml", "ray.cpuWorkers.replicas: Invalid type. Expected: integer, given: string"),
        ("bad-values-missing.yaml", "ingest.cameraGroups.0: sourcesSecret is required"),
    ],
)
def test_bad_values_are_rejected_by_the_schema(values: str, message: str) -> None:
    result = helm("template", "vlm", str(CHART), "-f", str(Path(__file__).parent / values))
    assert result.returncode != 0
    assert message in result.stderr


def test_neither_kafka_mode_is_rejected() -> None:
    result = helm("template", "vlm", str(CHART), "--set", "kafka.external.bootstrapServers=")
    assert result.returncode != 0 and "bootstrapServers" in result.stderr


# -- drift: the chart against what the project runs and exports ---------------------------
def test_rayservice_serves_the_local_serve_config() -> None:
    local = yaml.safe_load((ROOT / "deploy" / "serve" / "pipeline.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["serve"]["config"] == local, "values.yaml serve.config differs from deploy/serve/pipeline.yaml"
    for docs in (render(), render(FULL_VALUES)):
        service = next(d for d in docs if d["kind"] == "RayService")
        embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
        for app, local_app in zip(embedded["applications"], local["applications"], strict=True):
            args = dict(app["args"])
            assert args.pop("registry_dir") == "/var/lib/vlm-stream/models"
            assert args.pop("bootstrap") != local_app["args"]["bootstrap"]
            expected = {k: v for k, v in local_app["args"].items() if k != "bootstrap"}
            assert args == expected
            assert {k: v for k, v in app.items() if k != "args"} == {k: v for k, v in local_app.items() if k != "args"}
            PipelineConfig.parse(app["args"])  # the embedded args are a valid pipeline


def test_topic_names_agree_everywhere() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart_topics = {key: topic["name"] for key, topic in values["kafka"]["topics"].items()}
    code_topics = Topics().model_dump()
    chart_keys = {"to_label": "toLabel", "tracks_state": "tracksState"}
    assert chart_topics == {chart_keys.get(k, k): v for k, v in code_topics.items()}
    frames = values["kafka"]["topics"]["frames"]
    state = values["kafka"]["topics"]["tracksState"]
    assert state["compact"] is True and state["partitions"] == frames["partitions"], "co-partitioned, compacted"
    assert values["serve"]["config"]["applications"][0]["args"]["topics"] == code_topics


def exported_metric_names() -> set[str]:
    """Every series name the code exports: ray.util.metrics (prefixed ray_ by Ray's
    exporter), ingest's prometheus_client registry, and Ray's own node metrics."""
    from services.ingest.metrics import REGISTRY

    names: set[str] = set()
    for metric in ALL_METRICS:
        base = f"ray_{metric.name}"
        names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"} if metric.kind is Kind.HISTOGRAM else {base}
    for family in REGISTRY.collect():
        names |= {sample.name for sample in family.samples}
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "gauge":  # a labelled gauge has no sample until a camera sets it
            names.add(family.name)
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
    # Ray's node metrics (from Ray's own exporter; the GPU one appears only on GPU nodes).
    names |= {"ray_node_cpu_utilization", "ray_node_gpus_utilization"}
    return names


PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "delta", "histogram_quantile", "max", "avg", "and", "or", "vector", "le",
    "without", "on", "ignoring", "min", "count", "topk", "bool", "offset",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', "", expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_labels)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_ranges)
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_groupings))
    return {t for t in tokens if t not in PROMQL_WORDS and not re.fullmatch(r"[0-9.e+-]+", t)}


def test_promql_extractor_finds_metrics_not_functions_or_labels() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, task) (rate(ray_x_bucket{task="a b"}[5m]))) / sum(up) > 2'
    assert promql_metric_names(expr) == {"ray_x_bucket", "up"}


def test_alert_rules_and_dashboard_use_only_exported_metrics() -> None:
    alerts = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    assert (CHART / "files" / "alerts.yml").read_text() == alerts, "the chart's alert rules drifted from deploy/"
    exprs = [rule["expr"] for group in yaml.safe_load(alerts)["groups"] for rule in group["rules"]]
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "vlm-stream-dashboard.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exported = exported_metric_names()
    used = set().union(*(promql_metric_names(e) for e in exprs))
    assert used, "no metric names found"
    assert used <= exported, f"not exported by the code: {sorted(used - exported)}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for subject in ("per camera", "latency", "dropped", "dead-letter", "lag", "batch size", "versions", "gpu"):
        assert subject in titles


def test_rendered_prometheus_rule_is_the_tested_rule_file() -> None:
    rule = next(d for d in render() if d["kind"] == "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())


def test_promtool_checks_config_and_alert_rules() -> None:
    prometheus_dir = ROOT / "deploy" / "prometheus"
    for args in (["check", "config", "prometheus.yml"], ["test", "rules", "alerts.test.yml"]):
        result = subprocess.run(
            [_tool("promtool"), *args], cwd=prometheus_dir, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout + result.stderr
