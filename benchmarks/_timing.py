"""Shared timing of the benchmark scripts: contenders interleaved round-robin, median and spread.

Timing each contender in turn puts warm-up, allocator and machine-load drift on whichever runs first; here
every round runs every contender once (the order rotates each round), and each contender reports the
median, min and max of its rounds. ``environment()`` records what a result needs to be read later: device,
versions, command and the machine's load (``uptime``) when the run started.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch


def round_robin(
    contenders: dict[str, Callable[[], object]],
    rounds: int = 7,
    warmup: int = 1,
    inner: int = 1,
    device: torch.device | None = None,
) -> dict[str, dict]:
    """Time every contender ``rounds`` times, interleaved; one sample = mean of ``inner`` calls (ms).

    Returns {name: {"median_ms", "min_ms", "max_ms", "spread", "samples_ms"}}; spread = (max - min) / median.
    """

    def sync() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    sync()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            sync()
            t0 = time.perf_counter()
            for _ in range(inner):
                contenders[name]()
            sync()
            samples[name].append((time.perf_counter() - t0) * 1e3 / inner)
    out = {}
    for name, s in samples.items():
        med = statistics.median(s)
        out[name] = {
            "median_ms": med,
            "min_ms": min(s),
            "max_ms": max(s),
            "spread": (max(s) - min(s)) / med if med > 0 else 0.0,
            "samples_ms": s,
        }
    return out


def ratios(timings: dict[str, dict], reference: str) -> dict[str, float]:
    """median(reference) / median(name) for every contender: > 1 means faster than the reference."""
    ref = timings[reference]["median_ms"]
    return {name: ref / t["median_ms"] for name, t in timings.items() if t["median_ms"] > 0}


def version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(device: torch.device, **extra) -> dict:
    """Device, versions, command and load of this run."""
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": version("triton"),
        "scipy": version("scipy"),
        "transformers": version("transformers"),
        "onnxruntime": version("onnxruntime"),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
        "command": "python " + " ".join(sys.argv),
        "uptime_at_start": uptime(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    info.update(extra)
    return info


def print_table(title: str, timings: dict[str, dict], reference: str) -> None:
    rel = ratios(timings, reference)
    print(f"{title}:")
    for name, t in timings.items():
        print(
            f"  {name:26s} median {t['median_ms']:10.3f} ms  [{t['min_ms']:.3f} .. {t['max_ms']:.3f}]"
            f"  {rel.get(name, float('nan')):6.2f}x vs {reference}"
        )


def write_results(path, results: dict) -> None:
    """Write a benchmark's results as indented JSON to ``path`` (its folder created), and say where."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
