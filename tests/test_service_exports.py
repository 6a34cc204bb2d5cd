"""The service path for exported models: uploaded over HTTP to ``modelpress serve`` and
retrained as jobs, the way the zoo's models are compressed on the command line. The models are
built here (tests/exports.py): token ids with an attention mask, a skl2onnx-style classifier
with a label output and a ZipMap, a language model with a tied head, and a CNN exported with
its batch fixed at 1."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from examples import digits
from tests.exports import TiedLM, TokenClassifier, export, label_first_classifier, tokens
from tests.harness import Service, digits_dataset, upload_model, wait_for


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    running = Service(tmp_path_factory.mktemp("serve-exports"), workers=1).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exports")
    torch.manual_seed(0)
    ids, mask = tokens(2)
    paths = {
        "tokens": export(
            TokenClassifier(),
            (torch.from_numpy(ids), torch.from_numpy(mask)),
            ["input_ids", "attention_mask"],
            folder / "tokens.onnx",
        ),
        "lm": export(TiedLM(), (torch.from_numpy(ids),), ["input_ids"], folder / "lm.onnx"),
        "zipmap": folder / "zipmap.onnx",
        "fixed_cnn": folder / "fixed_cnn.onnx",
    }
    onnx.save(label_first_classifier(zipmap=True), str(paths["zipmap"]))
    cnn = digits.DigitsCNN(width=8)
    digits.train_digits(cnn, image=True, epochs=2)
    with torch.no_grad():
        torch.onnx.export(cnn.eval(), (torch.zeros(1, 1, 8, 8),), str(paths["fixed_cnn"]), dynamo=True,
                          external_data=False)  # fmt: skip
    return paths


def _upload_npz(client, **arrays: np.ndarray) -> dict:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    response = client.post("/v1/datasets", files={"file": ("data.npz", buffer.getvalue())})
    assert response.status_code == 201, response.text
    return response.json()


def test_exported_models_uploaded_over_http_retrain_as_jobs(
    service: Service, models: dict[str, Path]
) -> None:
    token = service.create_key("exports")
    ids, mask = tokens(160)
    with service.client(token) as client:
        uploaded = {name: upload_model(client, path) for name, path in models.items()}
        assert all(m["retrainable"] for m in uploaded.values()), uploaded
        data = {
            "tokens": _upload_npz(
                client, input_ids=ids, attention_mask=mask, y=(ids[:, 0] % 4).astype(np.int64)
            ),
            "lm": _upload_npz(client, input_ids=ids, y=np.roll(ids, -1, axis=1)),
            "zipmap": digits_dataset(client),
            "fixed_cnn": digits_dataset(client),
        }
        assert data["tokens"]["samples"] == 160 and data["tokens"]["labelled"]
        specs = {
            "tokens": ("nuclear", {"target_macs": 0.5}, {}),
            "lm": ("l2", {"energy": 0.9}, {}),
            "zipmap": ("group_lasso", {"target_macs": 0.5}, {"output": "output_probability"}),
            "fixed_cnn": ("variational", None, {}),
        }
        jobs = {}
        for name, (method, rank, training) in specs.items():
            body = {
                "model_id": uploaded[name]["id"],
                "dataset_id": data[name]["id"],
                "method": method,
                "training": {"epochs": 1, **training},
                "evaluation": {"latency": False},
                **({"rank": rank} if rank else {}),
            }
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            jobs[name] = response.json()["id"]
        for name, job_id in jobs.items():
            job = wait_for(client, job_id, timeout=600)
            assert job["status"] == "succeeded", (name, job)
            report = client.get(f"/v1/jobs/{job_id}/report").json()
            assert report["training"]["stages"]["train"]["history"], name
            assert report["after"]["accuracy"]["top1"] >= 0.0, name
            blob = client.get(f"/v1/jobs/{job_id}/artifacts/model.onnx")
            artifact = onnx.load_from_string(blob.content)
            original = onnx.load(str(models[name]))
            assert [i.name for i in artifact.graph.input] == [i.name for i in original.graph.input]
            assert [o.name for o in artifact.graph.output] == [o.name for o in original.graph.output]
            ort.InferenceSession(blob.content)  # the artifact runs
        wrong = client.post(
            "/v1/jobs",
            json={
                "model_id": uploaded["zipmap"]["id"],
                "dataset_id": data["zipmap"]["id"],
                "method": "nuclear",
                "training": {"epochs": 1, "output": "label"},
            },
        )
        assert wrong.status_code == 202, wrong.text
        failed = wait_for(client, wrong.json()["id"])
        assert failed["status"] == "failed" and "not a floating-point tensor" in str(failed), failed
