"""A newcomer's first five minutes (``make demo``).

Starts the embedded service, trains a small digits CNN and exports it the way users do
(``torch.onnx.export(dynamo=True)``, zipped with its external data), compresses it through
the client with ``nuclear`` and with ``svd``, prints both reports side by side, and runs a
small sweep whose curve picture it saves.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Effort:
    """How much training the demo does: the full tour, or a quick one (``--quick``) for tests."""

    export_epochs: int = 10
    nuclear_epochs: int = 8
    finetune_epochs: int = 2
    sweep_epochs: int = 5
    sweep_targets: tuple[float, ...] = (0.5, 0.25, 0.125, 0.06)


QUICK = Effort(
    export_epochs=3, nuclear_epochs=1, finetune_epochs=1, sweep_epochs=1, sweep_targets=(0.5, 0.25)
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(env: dict[str, str], port: int, out: Path) -> subprocess.Popen[bytes]:
    log = (out / "serve.log").open("wb")
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
    raise SystemExit(f"the service did not start; see {out / 'serve.log'}")


def export_model(effort: Effort, out: Path) -> Path:
    console.print("[bold]1.[/] training a digits CNN and exporting it with torch.onnx.export(dynamo=True)")
    model = digits.DigitsCNN()
    accuracy = digits.train_digits(model, image=True, epochs=effort.export_epochs)
    onnx_path = digits.export(model, torch.zeros(2, 1, 8, 8), out / "export" / "digits_cnn.onnx")
    bundle = digits.bundle(onnx_path, out / "digits_cnn.zip")
    console.print(
        f"   held-out accuracy {accuracy:.4f}; {bundle.name} holds "
        f"{', '.join(p.name for p in sorted(onnx_path.parent.iterdir()))}"
    )
    return bundle


def side_by_side(reports: dict[str, dict], finetune_epochs: int) -> Table:
    first = next(iter(reports.values()))
    table = Table(
        title=f"original vs compressed (target: 25% of the MACs, {finetune_epochs} fine-tuning epochs)"
    )
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A newcomer's first five minutes with modelpress.")
    parser.add_argument("--quick", action="store_true", help="train for a few epochs only")
    parser.add_argument("--out", type=Path, default=OUT, help="where the models and the picture go")
    args = parser.parse_args(argv)
    effort = QUICK if args.quick else Effort()
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "MODELPRESS_DATA_DIR": str(out / "data")}
    key = create_key(env)
    bundle = export_model(effort, out)
    port = free_port()
    console.print(f"[bold]2.[/] starting the embedded service on 127.0.0.1:{port} (SQLite, 2 local workers)")
    server = start_service(env, port, out)
    try:
        tour(Client(f"http://127.0.0.1:{port}", key), bundle, effort, out)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def create_key(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "create-key", "--tenant", "demo"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def tour(client: Client, bundle: Path, effort: Effort, out: Path) -> None:
    model = client.models.upload(bundle)
    dataset = client.datasets.builtin("digits")
    console.print(
        f"[bold]3.[/] uploaded {model.id}: {model.params:,} params, {model.macs:,} MACs, "
        f"opset {model.opset}, retrainable: {model.retrainable}"
    )
    jobs = {}
    for method, training in (
        ("svd", {"finetune_epochs": effort.finetune_epochs}),
        ("nuclear", {"epochs": effort.nuclear_epochs, "finetune_epochs": effort.finetune_epochs}),
    ):
        jobs[method] = client.jobs.create(
            model.id, method, dataset_id=dataset.id, rank={"target_macs": 0.25}, training=training
        )
    sweep = client.sweeps.create(
        model.id,
        dataset.id,
        methods=["svd", "nuclear"],
        targets=list(effort.sweep_targets),
        strengths={"nuclear": [1.0, 3.0]},
        training={"epochs": effort.sweep_epochs},
    )
    reports = {}
    for method, job in jobs.items():
        console.print(f"[bold]4.[/] {method}: following {job.id}")
        done = client.jobs.wait(job.id, progress=True)
        if done.status != "succeeded":
            raise SystemExit(f"{method} ended {done.status}: {done.error}")
        reports[method] = client.jobs.report(job.id)
        client.jobs.download(job.id, "model.onnx", out / f"digits_cnn.{method}.onnx")
    console.print(side_by_side(reports, effort.finetune_epochs))
    console.print(f"[bold]5.[/] sweep: svd and nuclear at {len(effort.sweep_targets)} MACs targets")
    done = client.jobs.wait(sweep.id, progress=True)
    if done.status != "succeeded":
        raise SystemExit(f"the sweep ended {done.status}: {done.error}")
    picture = client.jobs.download(sweep.id, "curve.png", out / "curve.png")
    console.print(f"compressed models: {out}/digits_cnn.svd.onnx, {out}/digits_cnn.nuclear.onnx")
    console.print(f"curve picture: {picture}")


if __name__ == "__main__":
    main()
