"""Service benchmark: does a training job slow down the API, and how soon does an idle worker start a job?

1. Status under load. ``modelpress serve`` (embedded default: SQLite, one local worker
   process) runs on loopback; a small dynamo-exported digits CNN (``examples.digits.DigitsCNN``,
   trained briefly, zipped with its external data) and the built-in digits dataset are uploaded,
   and a ``nuclear`` job with many epochs is started. While it trains, 50 concurrent clients
   (one ``httpx.AsyncClient`` each, keep-alive, connected before timing, a fixed number of
   requests each, one after the other) call ``GET /v1/jobs/{id}`` (bearer auth, two database
   reads, the record) and, in alternating rounds of the same shape with the same clients,
   ``GET /healthz`` (no auth check, no database). The headline figures are p50(job) ÷
   p50(healthz) and p99(job) ÷ p99(healthz): what a status poll costs over the cheapest request
   the same server answers under the same load, taken side by side because this machine is
   shared and noisy. The job's status and epoch are read before and
   after each round, so the tables say whether it was training throughout. Then the job is
   cancelled and the same rounds run with the worker idle, on the same (now cancelled) record:
   how much the training itself slows the server down.
2. Submit to running with an idle worker. With nothing else queued or running, an ``svd`` job
   is submitted and ``GET /v1/jobs/{id}`` polled every 10 ms until it leaves ``queued``; the
   client-seen delay (submit sent → first poll that is not queued) and the server's own
   ``started_at - created_at`` are recorded; each job is awaited before the next is submitted.

3. Stream load. While the same job trains, the rounds of 1. run twice side by side: first
   with no event streams open, then with ``--streams`` (300) ``GET /v1/jobs/{id}/events``
   streams held open by a separate process (so that reading them costs the polling clients
   nothing). The headline figures are p50(healthz, streams) ÷ p50(healthz, none) and
   p99(job, streams) ÷ p99(job, none); the goal is at most 2 and 3.

The latencies include the client's own event-loop time (50 coroutines and the server share
the CPU with the training worker), identically for both endpoints.

Results go to ``bench/results/service.json`` and the "Service" section of ``docs/benchmarks.md``
(only that section is replaced or appended; the others stay as they are).

    .venv/bin/python bench/service.py [--clients 50] [--requests 10] [--rounds 4] [--submits 5]
                                      [--streams 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from benchmarks_doc import DOCS, add_render_only, environment, render_only, write_section

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/, when run as a script
from compressors.report import library_versions
from examples import digits

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache" / "service"
RESULTS = ROOT / "bench" / "results" / "service.json"
SECTION = "## Service (bench/service.py)"
TRAINING_EPOCHS = 500  # far more than the measurement needs; the job is cancelled afterwards
POLL_SECONDS = 0.01


def log(message: str) -> None:
    print(message, flush=True)


def harness() -> Any:
    """``tests.harness`` (the loopback ``modelpress serve`` the service tests use). Imported here,
    after putting the repository first on ``sys.path``: run as a script, this file's folder comes
    first, and this very file would shadow the ``service`` package."""
    sys.path.insert(0, str(ROOT))
    from tests import harness as module

    return module


def digits_cnn_zip() -> Path:
    """A briefly trained DigitsCNN, exported with dynamo and zipped with its external data."""
    path = CACHE / "digits_cnn.zip"
    if path.exists():
        return path
    torch.manual_seed(0)
    model = digits.DigitsCNN()
    accuracy = digits.train_digits(model, image=True, epochs=3)
    log(f"trained DigitsCNN for 3 epochs: held-out accuracy {accuracy:.3f}")
    onnx_path = digits.export(model, torch.zeros(2, 1, 8, 8), CACHE / "export" / "digits_cnn.onnx")
    return digits.bundle(onnx_path, path)


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1e3
    return {
        "n": len(samples),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
    }


async def one_round(sessions: list[httpx.AsyncClient], path: str, requests: int) -> dict[str, Any]:
    """Every client sends ``requests`` GETs of ``path``, one after the other; latencies in seconds."""
    latencies: list[float] = []
    failures: dict[str, int] = {}

    async def client(session: httpx.AsyncClient) -> None:
        for _ in range(requests):
            start = time.perf_counter()
            try:
                response = await session.get(path)
                outcome = str(response.status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            latencies.append(time.perf_counter() - start)
            if outcome != "200":
                failures[outcome] = failures.get(outcome, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(client(session) for session in sessions))
    return {"latencies": latencies, "failures": failures, "seconds": time.perf_counter() - start}


def job_state(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": job["status"],
        "stage": job["progress"].get("stage"),
        "epoch": job["progress"].get("epoch"),
    }


def wait_until(client: httpx.Client, job_id: str, done: set[str], timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in done:
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} not {sorted(done)} after {timeout} s")


async def status_polls(
    url: str, token: str, job_id: str, clients: int, requests: int, rounds: int
) -> dict[str, Any]:
    """Alternating rounds of ``GET /v1/jobs/{job_id}`` and ``GET /healthz`` from the same
    ``clients`` keep-alive clients, the job's state read before and after each round."""
    job_path = f"/v1/jobs/{job_id}"
    samples: dict[str, list[float]] = {"job": [], "healthz": []}
    failures: dict[str, dict[str, int]] = {"job": {}, "healthz": {}}
    log_rounds = []
    async with contextlib.AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
            )
            for _ in range(clients)
        ]
        # every client connects and calls both endpoints once before anything is timed
        for path in (job_path, "/healthz"):
            await one_round(sessions, path, 1)
        monitor = sessions[0]
        for index in range(rounds):
            # alternate which endpoint goes first, so that a drift within a round pair hits both alike
            order = [("job", job_path), ("healthz", "/healthz")]
            for name, path in order if index % 2 == 0 else order[::-1]:
                before = job_state((await monitor.get(job_path)).json())
                result = await one_round(sessions, path, requests)
                after = job_state((await monitor.get(job_path)).json())
                samples[name] += result["latencies"]
                for outcome, count in result["failures"].items():
                    failures[name][outcome] = failures[name].get(outcome, 0) + count
                summary = percentiles(result["latencies"])
                log_rounds.append(
                    {
                        "round": index,
                        "endpoint": name,
                        "seconds": result["seconds"],
                        "requests_per_second": len(result["latencies"]) / result["seconds"],
                        "p50_ms": summary["p50_ms"],
                        "p99_ms": summary["p99_ms"],
                        "job_before": before,
                        "job_after": after,
                    }
                )
                log(
                    f"  round {index} {name:7s}: p50 {summary['p50_ms']:7.1f} ms  "
                    f"p99 {summary['p99_ms']:7.1f} ms  "
                    f"{len(result['latencies']) / result['seconds']:6.0f} req/s  job {before['status']} "
                    f"epoch {before['epoch']} -> {after['status']} epoch {after['epoch']}"
                )
    job, healthz = percentiles(samples["job"]), percentiles(samples["healthz"])
    return {
        "clients": clients,
        "requests_per_client": requests,
        "rounds": rounds,
        "job_get": {**job, "failures": failures["job"]},
        "healthz": {**healthz, "failures": failures["healthz"]},
        "ratio_p50": job["p50_ms"] / healthz["p50_ms"],
        "ratio_p99": job["p99_ms"] / healthz["p99_ms"],
        "job_running_throughout": all(
            r["job_before"]["status"] == "running" and r["job_after"]["status"] == "running"
            for r in log_rounds
        ),
        "rounds_detail": log_rounds,
    }


def submit_to_running(client: httpx.Client, model_id: str, submits: int) -> dict[str, Any]:
    spec = {"model_id": model_id, "method": "svd", "rank": {"energy": 0.9}, "evaluation": {"latency": False}}
    client_seen, server_side, statuses = [], [], []
    for _ in range(submits):
        start = time.perf_counter()
        response = client.post("/v1/jobs", json=spec)
        response.raise_for_status()
        job_id = response.json()["id"]
        while True:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] != "queued":
                break
            time.sleep(POLL_SECONDS)
        client_seen.append(time.perf_counter() - start)
        statuses.append(job["status"])
        finished = wait_until(client, job_id, {"succeeded", "failed", "cancelled"})
        created = datetime.fromisoformat(finished["created_at"])
        started = datetime.fromisoformat(finished["started_at"])
        server_side.append((started - created).total_seconds())
        log(
            f"  submit -> {job['status']}: {client_seen[-1] * 1e3:6.0f} ms seen by the client, "
            f"{server_side[-1] * 1e3:6.0f} ms started_at - created_at; job {finished['status']}"
        )
    return {
        "method": "svd",
        "poll_interval_s": POLL_SECONDS,
        "client_seen_s": client_seen,
        "server_started_minus_created_s": server_side,
        "first_status_after_queued": statuses,
        "median_client_seen_s": statistics.median(client_seen),
        "median_server_s": statistics.median(server_side),
    }


async def _hold(url: str, token: str, job_id: str, count: int, ready: Any, stop: Any, out: Any) -> None:
    """Open ``count`` event streams of the job, report once each has its first event, read
    them until told to stop."""
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    firsts: list[asyncio.Event] = []
    statuses: list[str] = []

    async def follow(first: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        statuses.append((await reader.readline()).decode().split(" ", 2)[1])
        while line := await reader.readline():
            if line.startswith(b"event:"):
                first.set()
        first.set()  # closed: counted, not waited for
        writer.close()

    tasks = []
    for _ in range(count):
        firsts.append(asyncio.Event())
        tasks.append(asyncio.create_task(follow(firsts[-1])))
    await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts)), 120)
    out.put({status: statuses.count(status) for status in set(statuses)})
    ready.set()
    while not stop.is_set():
        await asyncio.sleep(0.1)
    for task in tasks:
        task.cancel()


def hold_streams(url: str, token: str, job_id: str, count: int, ready: Any, stop: Any, out: Any) -> None:
    asyncio.run(_hold(url, token, job_id, count, ready, stop, out))


def stream_load(url: str, token: str, job_id: str, args: argparse.Namespace) -> dict[str, Any]:
    """The status-poll rounds with no streams, then with ``args.streams`` streams open."""
    import multiprocessing

    polls = (url, token, job_id, args.clients, args.requests, args.rounds)
    log("stream load: no event streams open")
    without = asyncio.run(status_polls(*polls))
    context = multiprocessing.get_context("spawn")
    ready, stop, out = context.Event(), context.Event(), context.Queue()
    holder = context.Process(target=hold_streams, args=(url, token, job_id, args.streams, ready, stop, out))
    holder.start()
    try:
        if not ready.wait(180):
            raise TimeoutError(f"{args.streams} event streams did not open in 180 s")
        opened = out.get(timeout=10)
        with httpx.Client(base_url=url) as client:
            metrics = client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
        gauges = {
            line.split()[0]: float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith(("modelpress_event_streams ", "modelpress_event_publishers "))
        }
        log(f"stream load: {args.streams} event streams open (answers {opened}; server gauges {gauges})")
        loaded = asyncio.run(status_polls(*polls))
    finally:
        stop.set()
        holder.join(30)
    return {
        "streams": args.streams,
        "stream_answers": opened,
        "server_gauges": gauges,
        "without_streams": without,
        "with_streams": loaded,
        "healthz_p50_ratio": loaded["healthz"]["p50_ms"] / without["healthz"]["p50_ms"],
        "job_p99_ratio": loaded["job_get"]["p99_ms"] / without["job_get"]["p99_ms"],
    }


def epochs_seen(polls: dict[str, Any]) -> list[int]:
    rounds = polls["rounds_detail"]
    epochs = [r["job_before"]["epoch"] for r in rounds] + [r["job_after"]["epoch"] for r in rounds]
    return [e for e in epochs if e is not None]


def throughput(polls: dict[str, Any], endpoint: str) -> float:
    rounds = [r for r in polls["rounds_detail"] if r["endpoint"] == endpoint]
    return sum(r["requests_per_second"] * r["seconds"] for r in rounds) / sum(r["seconds"] for r in rounds)


def stream_markdown(arm: dict[str, Any] | None) -> list[str]:
    if arm is None:
        return []
    rows = [
        (label, key, polls[key])
        for label, polls in (("none", arm["without_streams"]), (f"{arm['streams']}", arm["with_streams"]))
        for key in ("healthz", "job_get")
    ]
    names = {"healthz": "`GET /healthz`", "job_get": "`GET /v1/jobs/{id}`"}
    healthz_ok, job_ok = arm["healthz_p50_ratio"] <= 2, arm["job_p99_ratio"] <= 3
    return [
        "### Status polls with event streams open",
        "",
        f"The same rounds while the same job trains, first with no event streams, then with "
        f"{arm['streams']} `GET /v1/jobs/{{id}}/events` streams held open by a separate process (answers "
        f"{arm['stream_answers']}; the server's gauges then: {arm['server_gauges']}).",
        "",
        "| streams | endpoint | requests | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | non-200 |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {label} | {names[key]} | {row['n']:,} | {row['p50_ms']:.1f} | {row['p90_ms']:.1f} "
            f"| {row['p99_ms']:.1f} | {row['max_ms']:.1f} | {sum(row['failures'].values())} |"
            for label, key, row in rows
        ),
        "",
        f"**With {arm['streams']} streams ÷ without: p50(healthz) = {arm['healthz_p50_ratio']:.2f} "
        f"(goal ≤ 2: {'met' if healthz_ok else 'missed'}), p99(job) = {arm['job_p99_ratio']:.2f} "
        f"(goal ≤ 3: {'met' if job_ok else 'missed'}).** A job has one publisher that reads it every "
        "0.5 s whatever the number of listeners (`service/events.py`), and `/healthz` is answered on "
        "the event loop, never queued behind the thread pool.",
        "",
    ]


def markdown(results: dict[str, Any]) -> str:
    env, start = results["environment"], results["submit_to_running"]
    load, idle = results["status_under_load"], results["status_idle"]
    total = load["clients"] * load["requests_per_client"] * load["rounds"]
    seen = epochs_seen(load)
    trained = (
        f"the job was running throughout (epoch {min(seen)} → {max(seen)} during the rounds)"
        if load["job_running_throughout"] and seen
        else "**the job was not running throughout** (see `rounds_detail` in the JSON)"
    )
    failures = {
        f"{when} {name}": row["failures"]
        for when, polls in (("training", load), ("idle", idle))
        for name, row in (("job", polls["job_get"]), ("healthz", polls["healthz"]))
        if row["failures"]
    }
    rows = [
        (when, name, polls[key], throughput(polls, endpoint))
        for when, polls in (("training", load), ("idle", idle))
        for name, key, endpoint in (
            ("`GET /v1/jobs/{id}`", "job_get", "job"),
            ("`GET /healthz`", "healthz", "healthz"),
        )
    ]
    lines = [
        f"Measured {env['date']} on {env['cpu_count']} CPU cores ({env['machine']}); load average (1 min) "
        f"{env['load_average_at_start'][0]:.1f} at the start and {env['load_average_at_end'][0]:.1f} at the "
        "end (more than the cores means other work shared them). `modelpress serve` with the embedded "
        "default (SQLite, one local worker process) on loopback; the benchmark's clients run on the same "
        "machine. The machine is shared with other work, so absolute times drift; the ratios are taken "
        f"side by side. Whole script {results['wall_seconds'] / 60:.1f} min. Raw numbers and each round: "
        "`bench/results/service.json`.",
        "",
        "### Status polls while a job trains",
        "",
        f"A `nuclear` job on a dynamo-exported DigitsCNN (built-in digits) trains in the worker while "
        f"{load['clients']} concurrent clients (one `httpx.AsyncClient` each, keep-alive, connected before "
        "timing; the same clients for both endpoints) send "
        f"{load['requests_per_client']} sequential requests each per round, {load['rounds']} rounds per "
        f"endpoint, alternating `GET /v1/jobs/{{id}}` and `GET /healthz` rounds ({total:,} requests per "
        f"endpoint); {trained}. Then the job is cancelled and the same rounds run with the worker idle, "
        "on the same record. Latency is measured in the client, so it includes the client's own "
        "event-loop time, for both endpoints alike.",
        "",
        "| worker | endpoint | requests | req/s | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | non-200 |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {when} | {name} | {row['n']:,} | {rate:.0f} | {row['p50_ms']:.1f} | {row['p90_ms']:.1f} "
            f"| {row['p99_ms']:.1f} | {row['max_ms']:.1f} | {sum(row['failures'].values())} |"
            for when, name, row, rate in rows
        ),
        "",
        f"**While the job trains: p50(job) ÷ p50(healthz) = {load['ratio_p50']:.2f}, p99(job) ÷ "
        f"p99(healthz) = {load['ratio_p99']:.2f}.** Worker idle: {idle['ratio_p50']:.2f} and "
        f"{idle['ratio_p99']:.2f}. Training slows `GET /healthz` by "
        f"{load['healthz']['p50_ms'] / idle['healthz']['p50_ms']:.1f}× at p50 and "
        f"{load['healthz']['p99_ms'] / idle['healthz']['p99_ms']:.1f}× at p99 (training ÷ idle)."
        + (f" Non-200 answers: {failures}." if failures else " Every answer was a 200."),
        "",
        f"Each client sends its next request as soon as the last one returns, so {load['clients']} "
        "requests are always waiting: latency is mostly queueing (p50 ≈ clients ÷ req/s), and the "
        "p50 ratio is close to the ratio of the server's cost per request of the two endpoints. A "
        "status poll pays for the key lookup (its own database session), the job read and the "
        "record; `/healthz` for none of them.",
        "",
        *stream_markdown(results.get("stream_load")),
        "### Submit to running, idle worker",
        "",
        f"An `svd` job submitted with nothing else queued or running, {len(start['client_seen_s'])} times, "
        "each awaited before the next; the client polls `GET /v1/jobs/{id}` every "
        f"{start['poll_interval_s'] * 1e3:.0f} ms. The local worker looks for work every 0.2 s.",
        "",
        "| | median (ms) | samples (ms) |",
        "|---|---|---|",
        f"| submit sent → first poll not `queued` (client) | {start['median_client_seen_s'] * 1e3:.0f} | "
        + ", ".join(f"{s * 1e3:.0f}" for s in start["client_seen_s"])
        + " |",
        f"| `started_at − created_at` (server) | {start['median_server_s'] * 1e3:.0f} | "
        + ", ".join(f"{s * 1e3:.0f}" for s in start["server_started_minus_created_s"])
        + " |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--requests", type=int, default=10, help="requests per client per round (default 10)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per endpoint (default 4)")
    parser.add_argument("--submits", type=int, default=5, help="submit-to-running samples (default 5)")
    parser.add_argument("--streams", type=int, default=300, help="event streams of the stream-load arm (300)")
    add_render_only(parser, RESULTS)
    args = parser.parse_args(argv)
    if args.render_only:
        return render_only(SECTION, RESULTS, markdown)
    load_at_start = list(os.getloadavg())
    started = time.perf_counter()
    model_zip = digits_cnn_zip()
    loopback = harness()
    with tempfile.TemporaryDirectory(prefix="modelpress-bench-") as data_dir:
        # the stream-load arm holds all its streams with one key: the per-tenant cap must allow it
        service = loopback.Service(
            Path(data_dir), workers=1, MODELPRESS_EVENT_STREAMS_PER_TENANT=str(args.streams + 10)
        )
        token = service.create_key("bench")
        service.start()
        try:
            with service.client(token) as client:
                model = loopback.upload_model(client, model_zip)
                dataset = loopback.digits_dataset(client)
                spec = {
                    "model_id": model["id"],
                    "dataset_id": dataset["id"],
                    "method": "nuclear",
                    "rank": {"energy": 0.9},
                    "training": {"epochs": TRAINING_EPOCHS},
                    "evaluation": {"latency": False},
                }
                response = client.post("/v1/jobs", json=spec)
                response.raise_for_status()
                job_id = response.json()["id"]
                wait_until(client, job_id, {"running"})
                # past start-up (model conversion) and into the epochs
                deadline = time.monotonic() + 120
                while not client.get(f"/v1/jobs/{job_id}").json()["progress"].get("epoch"):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"job {job_id} reached no epoch in 120 s")
                    time.sleep(0.2)
                log(f"status polls while job {job_id} trains:")
                polls = (service.url, token, job_id, args.clients, args.requests, args.rounds)
                load = asyncio.run(status_polls(*polls))
                streams = stream_load(service.url, token, job_id, args)
                client.post(f"/v1/jobs/{job_id}/cancel").raise_for_status()
                cancelled = wait_until(client, job_id, {"cancelled", "succeeded", "failed"})
                # the same record (a cancelled job reads like a running one: no artifacts to list)
                log(f"training job {cancelled['status']}; the same polls with the worker idle:")
                idle = asyncio.run(status_polls(*polls))
                log("submit to running with an idle worker:")
                start = submit_to_running(client, model["id"], args.submits)
        finally:
            service.stop()
    results = {
        "benchmark": "service",
        "environment": environment(
            {**library_versions(), "httpx": httpx.__version__},
            load_average_at_start=load_at_start,  # 1, 5, 15 min: other work sharing the cores
            load_average_at_end=list(os.getloadavg()),
        ),
        "status_under_load": load,
        "status_idle": idle,
        "stream_load": streams,
        "submit_to_running": start,
        "wall_seconds": time.perf_counter() - started,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    write_section(SECTION, markdown(results))
    log("")
    log(
        f"while training: p50(job)/p50(healthz) = {load['ratio_p50']:.2f}   "
        f"p99(job)/p99(healthz) = {load['ratio_p99']:.2f}"
    )
    log(
        f"worker idle:    p50(job)/p50(healthz) = {idle['ratio_p50']:.2f}   "
        f"p99(job)/p99(healthz) = {idle['ratio_p99']:.2f}"
    )
    log(
        f"stream load ({args.streams} streams ÷ none): p50(healthz) {streams['healthz_p50_ratio']:.2f}x   "
        f"p99(job) {streams['job_p99_ratio']:.2f}x"
    )
    log(
        f"submit -> running (idle worker): median {start['median_client_seen_s'] * 1e3:.0f} ms client-seen, "
        f"{start['median_server_s'] * 1e3:.0f} ms server-side"
    )
    log(f"wrote {RESULTS.relative_to(ROOT)} and the section of {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
