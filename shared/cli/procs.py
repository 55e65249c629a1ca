"""Start and stop Onbrand's own processes (gateway, workers) for the demo, tests and benchmarks.

Each process is a real OS process talking over real TCP; this module only launches them with
the right environment, waits until they are ready, and stops exactly what it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]  # (host, port) for AF_INET; typeshed says Any
        return port


def onbrand_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from shared.cli.main import main; main()", *args]


@dataclass
class Processes:
    """The processes one run started, with the environment they share."""

    env: dict[str, str]
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)  # worker node -> its /metrics port

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        # own process group: stopping it also stops a Celery worker's pool children
        proc = subprocess.Popen(
            onbrand_cmd(*args), env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def gateway(self, port: int, workers: int = 1) -> str:
        self.start("gateway", "gateway", "--port", str(port), "--workers", str(workers))
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz", proc=self.procs["gateway"], log=self.logs / "gateway.log")
        return url

    def worker(
        self, pool: str, name: str | None = None, concurrency: int = 1, beat: bool = False
    ) -> subprocess.Popen[bytes]:
        node = name or pool
        # a port of its own: several workers share this machine (the default 9808 is one per pod)
        self.metrics_ports[node] = free_port()
        args = [
            "worker",
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--name",
            f"{node}@%h",
            "--metrics-port",
            str(self.metrics_ports[node]),
        ]
        return self.start(f"worker-{node}", *args, *(["--beat"] if beat else []))

    def wait_warm(self, timeout: float = 300.0) -> dict[str, float]:
        """Wait until every worker's pool processes have loaded their stage modules and models (workers.warmup,
        ONBRAND_WARM_MODELS): {node: seconds its warm-up took}. Returns what it has after `timeout` (a worker with
        warm-up off never reports), so a caller can go on, cold."""
        deadline, warm = time.monotonic() + timeout, dict[str, float]()
        while len(warm) < len(self.metrics_ports) and time.monotonic() < deadline:
            for node, port in self.metrics_ports.items():
                if node not in warm and (seconds := _warmed(port)) is not None:
                    warm[node] = seconds
            time.sleep(0.25)
        return warm

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def _warmed(port: int) -> float | None:
    """The seconds of a worker's warm-up once its /metrics reports it (onbrand_model_warmup_seconds), else None."""
    from shared.metrics import sample_total

    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None  # a worker serves /metrics once it is ready
    if sample_total(text, "onbrand_model_warmup_seconds_count") < 1:
        return None
    return sample_total(text, "onbrand_model_warmup_seconds_sum")


def base_env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, **OFFLINE_ENV, "ONBRAND_HOME": str(home)}
    env.update(extra)
    return env


def wait_http(
    url: str, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process for {url} exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")


def run_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(onbrand_cmd(*args), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"onbrand {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout
