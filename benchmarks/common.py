"""Shared pieces of the benchmark scripts: machine description, GEMM peaks, analytic FLOP counts, timing.

Every script prints a Markdown table preceded by :func:`machine_line`, so a pasted table always says where it
was measured. Timings are the best of interleaved repeats: on a shared machine the minimum is the figure least
disturbed by other processes.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import torch

from mert import EncoderConfig

__all__ = ["machine_line", "gemm_peaks", "encoder_flops", "best_of", "interleaved", "recipe_objective"]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """One Markdown line: CPU model, cores, threads, ISA extensions that matter, torch version."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        flags = " ".join(x for x in ("avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni") if f" {x}" in text)
    except OSError:
        pass
    return (
        f"*Machine: {cpu_model()}, {os.cpu_count()} cores ({flags or 'no AVX-512'}), "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}.*"
    )


def gemm_peaks(n: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Achieved GFLOP/s of an ``n^3`` GEMM: fp32 through torch.mm (MKL on x86), fp32 and bf16 through oneDNN.

    The oneDNN figures use the same fused linear op as the encoder (``mert.models.fast_path.linear``).
    """
    from mert.models.fast_path import linear

    flops = 2 * n**3
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = {}
    with torch.inference_mode():
        out["fp32 torch.mm"] = flops / best_of(lambda: a @ b, repeats) / 1e9
        out["fp32 oneDNN"] = flops / best_of(lambda: linear(a, b), repeats) / 1e9
        ab, bb = a.bfloat16(), b.bfloat16()
        out["bf16 oneDNN"] = flops / best_of(lambda: linear(ab, bb), repeats) / 1e9
    return out


def encoder_flops(
    config: EncoderConfig, num_samples: int, batch: int = 1, num_layers: int | None = None
) -> dict[str, float]:
    """Forward FLOPs (a multiply-add is 2) of one pass, by part; norms and activations are left out (< 1 %).

    ``num_layers`` counts a pass stopped after that many layers (``Encoder(..., layers=)``); default all.

    For MERT-v1-95M and 30 s (720000 samples): front end 0.22 TFLOP, positional conv 0.02, projections and
    FFN 0.38, attention scores and mixing 0.19; 0.81 TFLOP in all.
    """
    parts = {"front end": 0.0}
    t, c_in = num_samples, 1
    for c, k, s in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        t = (t - k) // s + 1
        parts["front end"] += 2 * t * c * c_in * k
        c_in = c
    d, f = config.hidden_size, config.ffn_size
    parts["positional conv"] = 2 * t * d * (d // config.pos_conv_groups) * config.pos_conv_kernel
    n = config.num_layers if num_layers is None else num_layers
    linears = 2 * t * c_in * d + n * (2 * t * d * 3 * d + 2 * t * d * d + 2 * 2 * t * d * f)
    parts["linear layers"] = linears
    parts["attention"] = n * 4 * t * t * d
    parts = {k: v * batch for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def best_of(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Fastest of ``repeats`` timed calls, in seconds."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best time of each function, running them in turn ``repeats`` times so load drifts hit all equally."""
    for fn in fns.values():
        fn()  # warm-up: allocator, oneDNN primitive caches
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def recipe_objective(overrides: list[str]):
    """The training objective a ``mert pretrain`` config composes (``overrides``, e.g. ``experiment=demo_cpu`` or
    ``model=conformer_tiny``), in train mode, with a k-means teacher fitted on 4 music-like clips and the CQT
    teacher, both on the encoder's frame grid: what a recipe trains from cached shards."""
    import math

    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from mert import Encoder
    from mert.pretrain import MERTObjective
    from mert.targets import CQTTargets, KMeansTargets
    from tests.helpers import music_like

    with initialize_config_module("mert.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.from_dict(OmegaConf.to_container(cfg.model, resolve=True)))
    grid = {"conv_kernel": enc.config.frame_kernel, "conv_stride": enc.config.frame_stride}
    corpus = [music_like(24000 * 4, seed=i)[0] for i in range(4)]
    km = KMeansTargets.fit(corpus, num_clusters=64, max_frames=1000, progress=False, **grid)
    cqt = CQTTargets(**grid, hop_length=math.prod(grid["conv_stride"]), compression="log", log_floor=0.01)
    settings = OmegaConf.to_container(cfg.objective, resolve=True)
    settings.pop("_target_")
    return MERTObjective(enc, km, cqt, **settings).train()
