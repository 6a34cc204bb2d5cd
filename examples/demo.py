"""A newcomer's first five minutes (``make demo``).

Starts the embedded service, trains a small digits CNN and exports it the way users do
(``torch.onnx.export(dynamo=True)``, zipped with its external data), compresses it through
the client with ``nuclear`` and with ``svd``, prints both reports side by side, and runs a
small sweep whose curve picture it saves.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from modelpress_client import Client
from rich.console import Console
from rich.table import Table

from examples import digits

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "demo"
console = Console()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    log = (OUT / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"the service did not start; see {OUT / 'serve.log'}")


def export_model() -> Path:
    console.print("[bold]1.[/] training a digits CNN and exporting it with torch.onnx.export(dynamo=True)")
    model = digits.DigitsCNN()
    accuracy = digits.train_digits(model, image=True, epochs=10)
    onnx_path = digits.export(model, torch.zeros(2, 1, 8, 8), OUT / "export" / "digits_cnn.onnx")
    bundle = digits.bundle(onnx_path, OUT / "digits_cnn.zip")
    console.print(
        f"   held-out accuracy {accuracy:.4f}; {bundle.name} holds "
        f"{', '.join(p.name for p in sorted(onnx_path.parent.iterdir()))}"
    )
    return bundle


def side_by_side(reports: dict[str, dict]) -> Table:
    first = next(iter(reports.values()))
    table = Table(title="original vs compressed (target: 25% of the MACs, 2 fine-tuning epochs)")
    table.add_column("figure")
    table.add_column("original", justify="right")
    for name in reports:
        table.add_column(name, justify="right")

    def row(label: str, pick, fmt: str) -> None:  # type: ignore[no-untyped-def]
        values = [pick(first["before"])] + [pick(r["after"]) for r in reports.values()]
        table.add_row(label, *("n/a" if v is None else fmt.format(v) for v in values))

    row("parameters", lambda m: m["params"], "{:,}")
    row("MACs / sample", lambda m: m["macs"], "{:,}")
    row("file bytes", lambda m: m["file_bytes"], "{:,}")
    row("latency ms, batch 1", lambda m: m["latency_ms"].get("1"), "{:.3f}")
    row("latency ms, batch 32", lambda m: m["latency_ms"].get("32"), "{:.3f}")
    row("top-1 accuracy", lambda m: (m.get("accuracy") or {}).get("top1"), "{:.4f}")
    return table


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    port = free_port()
    env = {**os.environ, "MODELPRESS_DATA_DIR": str(OUT / "data")}
    key = (
        subprocess.run(
            [sys.executable, "-m", "service.cli", "create-key", "--tenant", "demo"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    bundle = export_model()
    console.print(f"[bold]2.[/] starting the embedded service on 127.0.0.1:{port} (SQLite, 2 local workers)")
    server = start_service(env, port)
    try:
        client = Client(f"http://127.0.0.1:{port}", key)
        model = client.models.upload(bundle)
        dataset = client.datasets.builtin("digits")
        console.print(
            f"[bold]3.[/] uploaded {model.id}: {model.params:,} params, {model.macs:,} MACs, "
            f"opset {model.opset}, retrainable: {model.retrainable}"
        )
        jobs = {}
        for method, training in (
            ("svd", {"finetune_epochs": 2}),
            ("nuclear", {"epochs": 8, "finetune_epochs": 2}),
        ):
            jobs[method] = client.jobs.create(
                model.id, method, dataset_id=dataset.id, rank={"target_macs": 0.25}, training=training
            )
        sweep = client.sweeps.create(
            model.id,
            dataset.id,
            methods=["svd", "nuclear"],
            targets=[0.5, 0.25, 0.125, 0.06],
            strengths={"nuclear": [1.0, 3.0]},
            training={"epochs": 5},
        )
        reports = {}
        for method, job in jobs.items():
            console.print(f"[bold]4.[/] {method}: following {job.id}")
            done = client.jobs.wait(job.id, progress=True)
            if done.status != "succeeded":
                raise SystemExit(f"{method} ended {done.status}: {done.error}")
            reports[method] = client.jobs.report(job.id)
            client.jobs.download(job.id, "model.onnx", OUT / f"digits_cnn.{method}.onnx")
        console.print(side_by_side(reports))
        console.print("[bold]5.[/] sweep: svd and nuclear at four MACs targets")
        done = client.jobs.wait(sweep.id, progress=True)
        if done.status != "succeeded":
            raise SystemExit(f"the sweep ended {done.status}: {done.error}")
        picture = client.jobs.download(sweep.id, "curve.png", OUT / "curve.png")
        console.print(f"compressed models: {OUT}/digits_cnn.svd.onnx, {OUT}/digits_cnn.nuclear.onnx")
        console.print(f"curve picture: {picture}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    main()
