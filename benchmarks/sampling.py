"""Resource sampling while a benchmark mode runs: one polling thread, two samplers.

``polling`` is the scaffolding both samplers share (a daemon thread that calls a sampler
every interval until the block exits, then is joined), so each sampler is only its reading:

  peak_rss    the peak summed RSS of this process tree (Ray workers included)
  gpu_usage   GPU utilisation and memory (NVML or nvidia-smi, see below)

GPU counters, why not torch: asking torch for the device (``torch.cuda.*``) creates a CUDA
context in the benchmark's driver process, which holds GPU memory of its own and would be
counted in the very peak being measured. NVML (``pynvml``, from the ``nvidia-ml-py``
package) reads the driver's counters without a context; where it is missing,
``nvidia-smi`` gives the same counters more slowly; with neither (a CPU host) every figure
is ``None``.

``utilization.gpu`` is NVML's "a kernel was running during the last sample period" (1/6 s to
1 s): it says the GPU was kept busy, not how much of each SM a kernel used. Memory is
``memory.used``, every process on the device included (ours alone on a lent machine).
"""

from __future__ import annotations

import logging
import shutil
import statistics
import subprocess
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import psutil

log = logging.getLogger("avray.bench.gpu")

# (utilisation % per device, memory used MiB per device); None when a read fails.
Reading = tuple[list[float], list[float]]
SMI_QUERY = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
             "--format=csv,noheader,nounits"]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)  # old pynvml: bytes


def _nvml() -> tuple[Callable[[], Reading], list[str]] | None:
    """A reader over every device via NVML, with the device names; None without NVML/GPUs."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                   for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no package, no driver, no device
        return None
    if not handles:
        return None
    names = [_text(pynvml.nvmlDeviceGetName(h)) for h in handles]

    def read() -> Reading:
        util = [float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu) for h in handles]
        mem = [pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20 for h in handles]
        return util, mem

    return read, names


def _smi() -> tuple[Callable[[], Reading], list[str]] | None:
    """The same reader through ``nvidia-smi`` (one process per sample, ~50 ms each)."""
    if shutil.which("nvidia-smi") is None:
        return None

    def read() -> Reading:
        out = subprocess.run(SMI_QUERY, capture_output=True, text=True, timeout=5,
                             check=True).stdout
        rows = [[float(v) for v in line.split(",")] for line in out.strip().splitlines()]
        return [r[0] for r in rows], [r[1] for r in rows]

    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip().splitlines()
        read()
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return (read, names) if names else None


_PROBED: tuple[Callable[[], Reading], list[str], str] | None | bool = False


def probe() -> tuple[Callable[[], Reading], list[str], str] | None:
    """(reader, device names, source) from NVML, else nvidia-smi, else None; probed once."""
    global _PROBED
    if _PROBED is False:
        _PROBED = None
        for source, make in (("nvml", _nvml), ("nvidia-smi", _smi)):
            found = make()
            if found is not None:
                _PROBED = (*found, source)
                break
        log.info("GPU counters: %s", _PROBED[2] if _PROBED else "none (no NVML, no nvidia-smi)")
    return _PROBED


def device_names() -> list[str]:
    """Names of the GPUs on this host ([] on a CPU host), without creating a CUDA context."""
    found = probe()
    return found[1] if found else []


def summarise(util: list[float], mem: list[float]) -> dict[str, float | int | None]:
    """Utilisation % (averaged over devices per sample) and peak memory MiB (summed over
    devices). ``util_active_mean_pct`` is the mean from the first to the last busy sample:
    it drops model loading before the first kernel and the tail after the last one, which
    the plain mean counts as idle."""
    if not util:
        return {"util_mean_pct": None, "util_median_pct": None, "util_active_mean_pct": None,
                "mem_peak_mib": None, "samples": 0}
    busy = [i for i, u in enumerate(util) if u > 0]
    active = util[busy[0]:busy[-1] + 1] if busy else [0.0]
    return {"util_mean_pct": statistics.fmean(util), "util_median_pct": statistics.median(util),
            "util_active_mean_pct": statistics.fmean(active), "mem_peak_mib": max(mem),
            "samples": len(util)}


@contextmanager
def polling(sample: Callable[[], None], interval_s: float = 0.2) -> Iterator[None]:
    """Call ``sample`` every ``interval_s`` in a daemon thread while the block runs.

    The thread is joined on exit, so whatever ``sample`` accumulates is final once the
    block has left (daemon: a benchmark that dies mid-block is not held up by it)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            sample()
            stop.wait(interval_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def peak_rss(interval_s: float = 0.2) -> Iterator[dict]:
    """Track the peak summed RSS (bytes) of this process tree while the block runs."""
    result = {"peak_bytes": 0}
    me = psutil.Process()

    def sample() -> None:
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # a worker that exited between listing and reading
                pass
        result["peak_bytes"] = max(result["peak_bytes"], total)

    with polling(sample, interval_s):
        yield result


@contextmanager
def gpu_usage(interval_s: float = 0.2) -> Iterator[dict]:
    """Sample GPU utilisation and memory every ``interval_s`` while the block runs; the
    yielded dict is filled by ``summarise`` on exit (all None on a host without counters)."""
    result: dict = summarise([], [])
    found = probe()
    if found is None:
        yield result
        return
    read = found[0]
    util: list[float] = []
    mem: list[float] = []

    def sample() -> None:
        try:
            u, m = read()
            util.append(sum(u) / len(u))
            mem.append(sum(m))
        except Exception as err:  # a failed read loses one sample, not the benchmark
            log.debug("GPU sample failed: %s", err)

    try:
        with polling(sample, interval_s):
            yield result
    finally:
        result.update(summarise(util, mem))
