"""EOI generation speed and memory, side by side with torch.nn.init.orthogonal_ and the oracle.

Targets (issue 2; medians of >= 5 repeats, measured in one run on one machine):
  CPU: 2048x2048 d=0.1 <= 0.25x orthogonal_; 4096x4096 d=0.1 <= 0.1x; >= 300x faster than the
       one-rotation-at-a-time oracle at 2048x2048 d=0.1; 1000 x (128x128, d=0.125) <= 0.25 s.
  GPU: 16384x16384 d=0.1 <= 50 ms end to end and <= 0.1x orthogonal_ on the same GPU.
  Peak memory of the generator within 3x the output tensor's size.

Usage: python benchmarks/eoi_speed.py [--quick] [--no-oracle] [--device cuda] [--backend NAME]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from _common import median_time
from orthosparse import eoi_, eoi_group_
from orthosparse.eoi import default_backend, reference_sparse_orthogonal


def row(name: str, eoi_s: float, ref_s: float, ref_name: str, target: str) -> dict:
    ratio = eoi_s / ref_s
    print(f"{name:<34} eoi {eoi_s * 1e3:9.1f} ms   {ref_name} {ref_s * 1e3:9.1f} ms   "
          f"ratio {ratio:7.4f}   target {target}")
    return {"case": name, "eoi_s": eoi_s, "ref": ref_name, "ref_s": ref_s, "ratio": ratio,
            "target": target}


def square_vs_orthogonal(n: int, density: float, device, repeats: int, target: str,
                         backend: str) -> dict:
    g = torch.Generator().manual_seed(0)
    w = torch.empty(n, n, device=device)
    t_eoi = median_time(lambda: eoi_(w, density, generator=g, backend=backend), repeats,
                        warmup=True,
                        device=device)
    t_orth = median_time(lambda: torch.nn.init.orthogonal_(w), repeats, warmup=True,
                         device=device)
    return row(f"{n}x{n} d={density} [{device.type}]", t_eoi, t_orth, "orthogonal_", target)


def peak_memory_cpu(n: int, density: float, backend: str) -> dict | None:
    """Peak resident memory added by eoi_ on an n x n output, measured in a fresh process."""
    # Linux: writing 5 to clear_refs resets the peak-RSS counter (VmHWM) of the process.
    code = f"""
import gc, torch
from orthosparse import eoi_
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
w = torch.empty({n}, {n}); w.fill_(0.0)
eoi_(torch.empty(256, 256), 0.5, backend={backend!r})
gc.collect()
open('/proc/self/clear_refs', 'w').write('5')
before = status('VmRSS')
eoi_(w, {density}, backend={backend!r})
print(status('VmHWM') - before)
"""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"peak memory: could not measure ({exc})")
        return None
    extra = int(out.stdout.strip().splitlines()[-1])
    size = n * n * 4
    print(f"{n}x{n} d={density} [cpu] peak extra memory {extra / 2**20:8.1f} MiB = "
          f"{extra / size:5.2f}x the float32 output ({size / 2**20:.0f} MiB)   target <= 3x")
    return {"case": f"peak memory {n}x{n} cpu", "extra_bytes": extra, "ratio": extra / size,
            "target": "<= 3x"}


def peak_memory_cuda(n: int, density: float, device, backend: str) -> dict:
    w = torch.empty(n, n, device=device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    eoi_(w, density, generator=torch.Generator().manual_seed(0), backend=backend)
    torch.cuda.synchronize(device)
    extra = torch.cuda.max_memory_allocated(device) - base
    size = w.numel() * w.element_size()
    print(f"{n}x{n} d={density} [cuda] peak extra memory {extra / 2**20:8.1f} MiB = "
          f"{extra / size:5.2f}x the output   target <= 3x")
    return {"case": f"peak memory {n}x{n} cuda", "extra_bytes": extra, "ratio": extra / size,
            "target": "<= 3x"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--no-oracle", action="store_true", help="skip the slow oracle timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--backend", default="auto",
                        help="EOI backend (orthosparse.eoi.list_backends(); default auto)")
    args = parser.parse_args()
    device = torch.device(args.device)
    backend = args.backend
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, "
          f"EOI backend {default_backend(device) if backend == 'auto' else backend}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    rows = []
    if device.type == "cpu":
        big = 1024 if args.quick else 2048
        rows.append(square_vs_orthogonal(big, 0.1, device, args.repeats, "<= 0.25", backend))
        if not args.quick:
            rows.append(square_vs_orthogonal(4096, 0.1, device, args.repeats, "<= 0.1",
                                             backend))
        if not args.no_oracle:
            g = torch.Generator().manual_seed(0)
            w = torch.empty(big, big)
            t_fast = median_time(lambda: eoi_(w, 0.1, generator=g, backend=backend),
                                 args.repeats, warmup=True, device=device)
            t0 = time.perf_counter()
            reference_sparse_orthogonal(big, big, 0.1, generator=g, dtype=torch.float32)
            t_ref = time.perf_counter() - t0  # one run: the oracle is the slow reference
            rows.append(row(f"{big}x{big} d=0.1 vs oracle [cpu]", t_fast, t_ref, "oracle",
                            "<= 1/300 = 0.0033"))
        layers = [torch.empty(128, 128) for _ in range(1000)]
        g = torch.Generator().manual_seed(0)
        t_batch = median_time(lambda: eoi_group_(layers, 0.125, generator=g, backend=backend),
                              args.repeats, warmup=True, device=device)
        print(f"{'1000 x 128x128 d=0.125 [cpu]':<34} eoi {t_batch * 1e3:9.1f} ms   "
              f"target <= 250 ms total")
        rows.append({"case": "1000 x 128x128 d=0.125 cpu", "eoi_s": t_batch,
                     "target": "<= 0.25 s"})
        rows.append(peak_memory_cpu(2048 if args.quick else 4096, 0.1, backend))
    else:
        n = 4096 if args.quick else 16384
        rows.append(square_vs_orthogonal(n, 0.1, device, args.repeats, "<= 0.1 and <= 50 ms",
                                         backend))
        layers = [torch.empty(128, 128, device=device) for _ in range(1000)]
        g = torch.Generator().manual_seed(0)
        t_batch = median_time(lambda: eoi_group_(layers, 0.125, generator=g, backend=backend),
                              args.repeats, warmup=True, device=device)
        print(f"{'1000 x 128x128 d=0.125 [cuda]':<34} eoi {t_batch * 1e3:9.1f} ms")
        rows.append({"case": "1000 x 128x128 d=0.125 cuda", "eoi_s": t_batch})
        rows.append(peak_memory_cuda(n, 0.1, device, backend))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r for r in rows if r], f, indent=2)


if __name__ == "__main__":
    main()
