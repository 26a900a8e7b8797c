"""``make bench``: speed figures measured side by side in one run, written to docs/benchmarks.md.

    python -m adprune_core.bench [--device auto] [--out docs/benchmarks.md] [--quick]

1. Density-measurement overhead: a training step (forward, backward, SGD) with the
   ``DensityMeter`` counting vs not, interleaved (on, off, on, off...) so that drift hits both alike.
2. Input pipeline: our ``DeviceLoader`` (decoded uint8 tensors on the device, vectorised crop and
   flip) against a torchvision ``DataLoader`` with PIL transforms on the same images.
3. Dense vs pruned: training throughput of dense VGG-19 and of the same network cut to 30% of
   every layer's width (about what activation-density pruning reaches in its first rounds).
4. Achieved FLOP/s: dense VGG-19 and ResNet-18 training at CIFAR (32x32) and TinyImageNet (64x64,
   200 classes) shapes, as images/s x measured training FLOPs per image, and as a fraction of the
   device's matrix-multiply rate measured in the same run (bf16 on a GPU, fp32 on a CPU).
5. Concurrent pruned trials: 1, 2 and 4 processes each training a pruned VGG-19 on the same device;
   their summed throughput against one alone (on a CPU, each gets cores / k threads).

Each device's results replace that device's section of the output file; other sections stay.
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from adprune_core.config import ModelConfig, TrainConfig
from adprune_core.costs import count_params, training_flops
from adprune_core.data import DeviceLoader
from adprune_core.density import DensityMeter
from adprune_core.graph import analyse, prepare_model
from adprune_core.models import build_model
from adprune_core.surgery import shrink_to_widths
from adprune_core.trainer import autocast_dtype, build_optimizer, resolve_device, uses_channels_last

SHAPE = (3, 32, 32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, 10, (n,), generator=g)


def _model(name: str, device: torch.device, keep: float = 1.0, shape: tuple[int, int, int] = SHAPE,
           classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    model = prepare_model(build_model(ModelConfig(name=name), classes, shape)).to(device)
    if keep < 1.0:
        example = torch.zeros(1, *shape, device=device)
        widths = {g.name: max(1, round(g.width * keep)) for g in analyse(model, example).groups}
        shrink_to_widths(model, widths, example)
    return model


def _step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """One training step as the trainer runs it (autocast, NHWC on CUDA), on a fixed batch."""
    dtype = autocast_dtype(TrainConfig(), x.device)
    opt = build_optimizer(model, TrainConfig())
    loss_fn = nn.CrossEntropyLoss()
    if uses_channels_last(TrainConfig(), x.device):
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _time(fn, device: torch.device, steps: int) -> float:
    """Seconds per call of ``fn``, over ``steps`` calls after the caller's warm-up."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def density_overhead(name: str, device: torch.device, batch: int, steps: int, rounds: int) -> dict:
    model = _model(name, device)
    x = torch.randn(batch, *SHAPE, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    meter = DensityMeter(model, analyse(model, x[:1]).activations)
    step = _step_fn(model, x, y)
    meter.active = True
    for _ in range(3):
        step()
    on, off = [], []
    for _ in range(rounds):
        meter.active = True
        on.append(_time(step, device, steps))
        meter.active = False
        off.append(_time(step, device, steps))
    meter.remove()
    t_on, t_off = statistics.median(on), statistics.median(off)
    return {"model": name, "batch": batch, "ms_on": 1e3 * t_on, "ms_off": 1e3 * t_off,
            "overhead": t_on / t_off - 1}


def input_pipeline(device: torch.device, n: int, batch: int, workers: int) -> dict:
    import torchvision.transforms as T
    from PIL import Image

    images, labels = _images(n)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    ours = DeviceLoader(images, labels, batch_size=batch, device=device, mean=mean, std=std, train=True)

    def run_ours() -> None:
        for _batch in ours:
            pass

    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])

    class PILSet(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int):
            return transform(pil[i]), int(labels[i])

    loader = torch.utils.data.DataLoader(PILSet(), batch_size=batch, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)

    def run_torchvision() -> None:
        for x, _ in loader:
            x.to(device, non_blocking=True)

    run_ours()  # warm-up (workers start, caches fill)
    run_torchvision()
    t_ours = _time(run_ours, device, 2)
    t_tv = _time(run_torchvision, device, 2)
    return {"images": n, "workers": workers, "ours": n / t_ours, "torchvision": n / t_tv}


def dense_vs_pruned(name: str, device: torch.device, batch: int, steps: int, keep: float) -> dict:
    x = torch.randn(batch, *SHAPE, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    rows: dict[str, dict[str, float]] = {}
    steps_by_kind = {}
    for kind, k in (("dense", 1.0), ("pruned", keep)):
        model = _model(name, device, k)
        step = _step_fn(model, x, y)
        for _ in range(3):
            step()
        steps_by_kind[kind] = step
        rows[kind] = {"params": count_params(model)}
    times: dict[str, list[float]] = {kind: [] for kind in rows}
    for _ in range(3):  # interleaved
        for kind, step in steps_by_kind.items():
            times[kind].append(_time(step, device, steps))
    for kind in rows:
        rows[kind]["images_per_s"] = batch / statistics.median(times[kind])
    return {"model": name, "keep": keep, **rows}


def matmul_rate(device: torch.device) -> dict:
    """The device's dense matrix-multiply rate (FLOP/s): bf16 8192^3 on a GPU, fp32 2048^3 on a CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds = _time(lambda: a @ b, device, 10)
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "flops_per_s": 2 * n**3 / seconds}


def dense_throughput(name: str, shape: tuple[int, int, int], classes: int, device: torch.device, batch: int,
                     steps: int, rounds: int) -> dict:
    """Training images/s of a dense network and the FLOP/s that achieves (measured FLOPs per image)."""
    model = _model(name, device, shape=shape, classes=classes)
    per_image = training_flops(model, shape)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    step = _step_fn(model, x, y)
    for _ in range(3):
        step()
    seconds = statistics.median(_time(step, device, steps) for _ in range(rounds))
    images_per_s = batch / seconds
    return {"model": name, "shape": "x".join(map(str, shape[1:])), "classes": classes, "batch": batch,
            "images_per_s": images_per_s, "flops_per_s": images_per_s * per_image}


def _concurrent_worker(rank: int, device: str, batch: int, steps: int, threads: int, barrier, results) -> None:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    model = _model("vgg19", dev, keep=0.3)
    x = torch.randn(batch, *SHAPE, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    step = _step_fn(model, x, y)
    for _ in range(3):
        step()
    _sync(dev)
    barrier.wait()
    results[rank] = _time(step, dev, steps)


def concurrent_trials(device: torch.device, batch: int, steps: int, ks: tuple[int, ...] = (1, 2, 4)) -> list[dict]:
    """Summed training throughput of k processes, each with its own pruned VGG-19, on one device."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    cores = torch.get_num_threads()
    rows = []
    for k in ks:
        barrier, manager = ctx.Barrier(k), ctx.Manager()
        results = manager.dict()
        threads = 1 if device.type == "cuda" else max(1, cores // k)
        procs = [ctx.Process(target=_concurrent_worker, args=(r, str(device), batch, steps, threads, barrier,
                                                              results)) for r in range(k)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        if len(results) != k:
            raise RuntimeError(f"{k - len(results)} of {k} benchmark workers failed")
        rows.append({"k": k, "threads": threads, "images_per_s": sum(batch / t for t in results.values())})
        manager.shutdown()
    return rows


def render(device: torch.device, command: str, overhead: list[dict], pipe: dict, pruned: list[dict],
           peak: dict, dense: list[dict], concurrent: list[dict]) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    lines = [f"## {name}", "",
             f"Command: `{command}`  ", f"torch {torch.__version__}, Python {platform.python_version()}, "
             f"{time.strftime('%Y-%m-%d')}", "",
             "### Density measurement overhead (training step, counting on vs off, interleaved)", "",
             "| model | batch | step ms, counting | step ms, not counting | overhead |", "|---|---|---|---|---|"]
    for r in overhead:
        lines.append(f"| {r['model']} | {r['batch']} | {r['ms_on']:.1f} | {r['ms_off']:.1f} | "
                     f"{100 * r['overhead']:+.1f}% |")
    lines += ["", "### Input pipeline (one training epoch of 32x32 images, crop + flip + normalise)", "",
              "| pipeline | images/s | ratio |", "|---|---|---|",
              f"| ours: DeviceLoader (uint8 tensors on {device.type}, vectorised augmentation) | {pipe['ours']:,.0f} | "
              f"{pipe['ours'] / pipe['torchvision']:.1f}x |",
              f"| torchvision DataLoader + PIL transforms ({pipe['workers']} workers) | "
              f"{pipe['torchvision']:,.0f} | 1.0x |",
              "", "### Dense vs pruned training throughput (every layer cut to the given fraction of its width)", "",
              "| model | keep | params dense | params pruned | images/s dense | images/s pruned | speed-up |",
              "|---|---|---|---|---|---|---|"]
    for r in pruned:
        d, p = r["dense"], r["pruned"]
        speedup = p["images_per_s"] / d["images_per_s"]
        lines.append(f"| {r['model']} | {r['keep']:.0%} | {d['params'] / 1e6:.2f}M | {p['params'] / 1e6:.2f}M | "
                     f"{d['images_per_s']:,.0f} | {p['images_per_s']:,.0f} | {speedup:.1f}x |")
    lines += ["", f"### Achieved FLOP/s, dense training (matrix-multiply rate measured in this run: "
              f"{peak['flops_per_s'] / 1e12:.2f} TFLOP/s, {peak['dtype']} {peak['n']}^3)", "",
              "| model | input | classes | batch | images/s | achieved TFLOP/s | of matmul rate |",
              "|---|---|---|---|---|---|---|"]
    for r in dense:
        lines.append(f"| {r['model']} | {r['shape']} | {r['classes']} | {r['batch']} | {r['images_per_s']:,.0f} | "
                     f"{r['flops_per_s'] / 1e12:.3f} | {r['flops_per_s'] / peak['flops_per_s']:.0%} |")
    if device.type != "cuda":
        lines += ["", "On a CPU the reference is MKL's fp32 matrix product, which oneDNN's convolutions outrun, so the "
                  "fraction can exceed 100%; the figure that matters is the GPU's, against its bf16 rate."]
    lines += ["", "### Concurrent pruned trials on one device (VGG-19 cut to 30% width, one process each)", "",
              "| processes | threads each | summed images/s | vs one |", "|---|---|---|---|"]
    for r in concurrent:
        lines.append(f"| {r['k']} | {r['threads']} | {r['images_per_s']:,.0f} | "
                     f"{r['images_per_s'] / concurrent[0]['images_per_s']:.2f}x |")
    return "\n".join(lines) + "\n"


def write_section(path: Path, key: str, body: str) -> None:
    """Replace this device's section of ``path`` (or add it), leaving the other sections as they are."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{body}{end}\n"
    text = path.read_text() if path.exists() else (
        "# Benchmarks\n\nProduced by `make bench` (`python -m adprune_core.bench`); each device's section is "
        "rewritten by a run on that device. Figures are medians of interleaved repeats.\n\n")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end) + "\n?", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke check of the benchmark)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True
    batch = 128 if gpu else 32
    steps, rounds = (20, 5) if gpu else (5, 5)
    if args.quick:
        steps, rounds = 1, 1
    command = "make bench"
    if args.device != "auto":
        command += f" (python -m adprune_core.bench --device {args.device})"
    print(f"benchmarking on {device} ...", file=sys.stderr)
    overhead = [density_overhead(m, device, batch, steps, rounds) for m in ("vgg19", "resnet18")]
    pipe = input_pipeline(device, 10_000 if gpu else 4_000, 128, workers=min(4, torch.get_num_threads()))
    pruned = [dense_vs_pruned("vgg19", device, batch, steps, keep=0.3)]
    peak = matmul_rate(device)
    dense = [dense_throughput(m, shape, classes, device, batch, steps, rounds)
             for m in ("vgg19", "resnet18") for shape, classes in (((3, 32, 32), 10), ((3, 64, 64), 200))]
    concurrent = concurrent_trials(device, batch, steps)
    body = render(device, command, overhead, pipe, pruned, peak, dense, concurrent)
    print(body)
    write_section(Path(args.out), "gpu" if gpu else "cpu", body)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
