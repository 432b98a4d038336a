"""Timing helpers shared by the benchmarks (bench/*.py): wall time of a call (waiting for a GPU), the machine's
fp32 matmul rate (the peak a stage's FLOP rate is compared with), and the device's name for the report."""

import platform
import time

import torch


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def timed(fn, device) -> float:
    """Seconds one call of fn takes, waiting for a GPU's queued kernels to finish."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def matmul_gflops(device, n=4096, repeats=5, dtype=torch.float32) -> float:
    """GFLOP/s of the fastest of `repeats` n x n matmuls on device (after a warm-up)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    return 2 * n**3 / min(timed(lambda: a @ b, device) for _ in range(repeats)) / 1e9
