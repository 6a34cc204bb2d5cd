"""``POST /v1/sweeps`` over real HTTP: methods × targets trained and cut, one curve report."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Service, digits_dataset, upload_model, wait_for


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with Service(tmp_path_factory.mktemp("serve"), workers=1) as running:
        yield running


def test_a_sweep_returns_the_curve_of_every_method_at_every_target(
    service: Service, digits_cnn_zip: Path
) -> None:
    with service.client(service.create_key("acme")) as client:
        model = upload_model(client, digits_cnn_zip)
        dataset = digits_dataset(client)
        body = {
            "model_id": model["id"],
            "dataset_id": dataset["id"],
            "methods": ["svd", "prune", "l2"],
            "targets": [0.5, 0.25],
            "strengths": {"l2": [0.01]},
            "training": {"epochs": 1},
        }
        created = client.post("/v1/sweeps", json=body)
        assert created.status_code == 202, created.text
        sweep_id = created.json()["id"]
        assert created.json()["kind"] == "sweep"
        done = wait_for(client, sweep_id, timeout=600)
        assert done["status"] == "succeeded", done
        assert client.get(f"/v1/sweeps/{sweep_id}").json()["status"] == "succeeded"
        assert {"report.json", "curve.csv", "curve.json", "curve.png"} <= set(done["artifacts"])
        report = client.get(f"/v1/jobs/{sweep_id}/report").json()
        assert report["kind"] == "sweep" and 0.5 < report["baseline_accuracy"] <= 1.0
        points = {(p["method"], p["target"]): p for p in report["points"]}
        assert set(points) == {(m, t) for m in body["methods"] for t in body["targets"]}
        for target in body["targets"]:
            for method in ("svd", "l2"):  # factorizing: the target is a MACs ratio
                assert abs(points[method, target]["macs_ratio"] - target) <= 0.05
            pruned = points["prune", target]  # unstructured: nonzeros fall, MACs do not
            assert pruned["macs_ratio"] == 1.0 and abs(pruned["params_ratio"] - target) <= 0.05
        assert points["l2", 0.5]["strength"] == 0.01 and points["svd", 0.5]["strength"] is None
        assert report["pareto_macs"] and report["pareto_params"]
        table = client.get(f"/v1/jobs/{sweep_id}/artifacts/curve.csv").text
        assert len(list(csv.DictReader(io.StringIO(table)))) == len(points)
        assert client.get(f"/v1/jobs/{sweep_id}/artifacts/curve.png").content.startswith(b"\x89PNG")


def test_a_sweep_refuses_unknown_methods_and_is_not_a_job(service: Service, digits_cnn_zip: Path) -> None:
    with service.client(service.create_key("globex")) as client:
        model = upload_model(client, digits_cnn_zip)
        dataset = digits_dataset(client)
        bad = client.post(
            "/v1/sweeps", json={"model_id": model["id"], "dataset_id": dataset["id"], "methods": ["zip"]}
        )
        assert bad.status_code == 422 and bad.json()["type"].endswith("/validation-error")
        job = client.post("/v1/jobs", json={"model_id": model["id"], "method": "svd"}).json()
        assert client.get(f"/v1/sweeps/{job['id']}").status_code == 404
