"""Time the spectrogram + Conformer family against its references, side by side in one run.

    python benchmarks/conformer.py --layout muq_large --seconds 10 --repeats 3
    python benchmarks/conformer.py --small --seconds 5 --batch 4     # conformer_small vs small, training

Default mode: one MuQ-layout model with random weights, held by three systems: `mert` (``Encoder``, waveform to
hidden states), `muq` (the `muq` package's own mel front end and 2-D conv subsampler plus transformers'
``Wav2Vec2ConformerEncoder``, composed as ``MuQModel.get_predictions`` does: the whole MuQ forward pass) and,
on the same subsampled input, the encoders alone: `mert conformer` (our :class:`mert.models.conformer.Conformer`)
against `transformers` (``Wav2Vec2ConformerEncoder``). Runs alternate between the systems so drifts in machine
load hit all equally (the machine may be shared); each figure is the best of the repeats. Prints, as Markdown,
the CPU, this run's 2048^3 GEMM peaks, and per system seconds per pass, its time over ours (> 1: ours is
faster) and the achieved GFLOP/s (analytic count of the GEMM-shaped work) as a share of the fp32 peak.

``--small``: pretraining throughput of ``conformer_small`` against the waveform ``small`` model
(``conf/model/small.yaml``): a forward and backward pass and an AdamW step on a batch, as audio seconds
trained per CPU second (process CPU time, all threads) and per wall second.

Needs ``pip install --no-deps muq`` for the `muq` rows (its package __init__ needs more; its module files are
loaded directly). Takes 1-3 minutes on 2 cores at the defaults.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import gemm_peaks, machine_line  # noqa: E402
from mert import Encoder, EncoderConfig  # noqa: E402
from tests.helpers import music_like  # noqa: E402

SR = 24000


def conformer_flops(config: EncoderConfig, num_samples: int, batch: int = 1) -> dict[str, float]:
    """Forward FLOPs (a multiply-add is 2) of the spectrogram family, by part; norms, activations, the STFT and
    depthwise convs left out (a few per cent)."""
    s = num_samples // config.mel_hop
    m, d, f, n = config.n_mels, config.hidden_size, config.ffn_size, config.num_layers
    parts = {"mel": 2 * s * (config.n_fft // 2 + 1) * m}
    if config.subsampler == "conv2d":
        c = config.subsampler_channels[0]
        t1, f1 = -(-s // config.subsampler_strides[0]), m // 2
        t2, f2 = -(-t1 // config.subsampler_strides[1]), m // 4
        convs = 2 * 9 * (t1 * f1 * (c + c + c * c) + t2 * f2 * 3 * c * c)  # 3x3 convs: 1->c twice, c->c four times
        parts["subsampler"] = convs + 2 * t2 * c * f2 * d
        t = t2
    else:
        total, t, c_in = 0.0, s, m
        for c, depth, st in zip(config.subsampler_channels, config.subsampler_depths, config.subsampler_strides):
            if c != c_in or st != 1:
                t = (t - 2) // st + 1
                total += 2 * t * c_in * c * 2
            total += depth * 2 * t * (2 * c * 4 * c)
            c_in = c
        parts["subsampler"] = total
    parts["linear layers"] = n * 2 * t * (2 * 2 * d * f + 4 * d * d + 3 * d * d)  # 2 FFNs, q/k/v/out, conv module
    parts["attention"] = n * 4 * t * t * d
    parts = {k: v * batch for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def _muq_module(name: str):
    spec = importlib.util.find_spec("muq")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "muq" / "modules" / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"_muq_bench_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def reference_models(enc: Encoder):
    """(MuQ's front end + subsampler, transformers' Wav2Vec2ConformerEncoder) holding ``enc``'s weights."""
    from transformers import Wav2Vec2ConformerConfig
    from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import Wav2Vec2ConformerEncoder

    cfg = enc.config
    w2v2 = Wav2Vec2ConformerConfig(
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.ffn_size, conv_depthwise_kernel_size=cfg.conv_module_kernel, hidden_act="swish",
        position_embeddings_type="rotary", rotary_embedding_base=int(cfg.rope_base), hidden_dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, conformer_conv_dropout=0.0, layerdrop=0.0,
    )  # fmt: skip
    w2v2._attn_implementation = "sdpa"  # transformers' fastest CPU attention
    conformer = Wav2Vec2ConformerEncoder(w2v2).eval()
    ours = enc.state_dict()
    theirs = {}
    for k, v in conformer.state_dict().items():
        if k.startswith("layer_norm."):
            theirs[k] = ours[f"transformer.norm.{k.split('.')[-1]}"]
            continue
        if k.startswith("pos_conv_embed") or k.startswith("embed_positions"):
            theirs[k] = v
            continue
        name = (k.replace("self_attn_layer_norm", "attn_norm").replace("ffn1_layer_norm", "ffn1_norm")
                .replace("ffn2_layer_norm", "ffn2_norm").replace("final_layer_norm", "final_norm")
                .replace("intermediate_dense", "fc1").replace("output_dense", "fc2")
                .replace("self_attn.linear_out", "attn.out")
                .replace("conv_module.layer_norm", "conv.norm").replace("conv_module.pointwise_conv1", "conv.pw1")
                .replace("conv_module.depthwise_conv", "conv.dw").replace("conv_module.batch_norm", "conv.mid_norm")
                .replace("conv_module.pointwise_conv2", "conv.pw2"))  # fmt: skip
        if k.split(".")[-2] in ("linear_q", "linear_k", "linear_v"):
            layer, which, kind = k.split(".")[1], k.split(".")[3][-1], k.split(".")[-1]
            fused = ours[f"transformer.layers.{layer}.attn.qkv.{kind}"]
            theirs[k] = fused.chunk(3, dim=0)["qkv".index(which)]
        else:
            theirs[k] = ours[f"transformer.{name}"]
    conformer.load_state_dict(theirs)
    conv_mod, feat_mod = _muq_module("conv"), _muq_module("features")
    front = None
    if conv_mod is not None:
        c = cfg.subsampler_channels[0]
        strides = list(cfg.subsampler_strides)
        conv = conv_mod.Conv2dSubsampling(1, c, cfg.hidden_size, strides=strides, n_bands=cfg.n_mels).eval()
        conv.load_state_dict({k.replace("blocks.", "conv."): v for k, v in enc.subsampler.state_dict().items()})
        mel = feat_mod.MelSTFT(n_fft=cfg.n_fft, hop_length=cfg.mel_hop, is_db=True)
        mean, std = float(enc.frontend.mel_mean[0]), float(enc.frontend.mel_std[0])

        def front(wav, conv=conv, mel=mel, mean=mean, std=std):
            return conv((mel(wav)[..., :-1] - mean) / std)

    return front, conformer


def run_encoders(args) -> None:
    cfg = EncoderConfig.preset(args.layout)
    if args.layers:
        cfg = cfg.replace(num_layers=args.layers)
    if cfg.subsampler != "conv2d":
        raise SystemExit("the reference comparison uses the MuQ layout (--layout muq_large)")
    torch.manual_seed(0)
    enc = Encoder(cfg).eval()
    front, conformer = reference_models(enc)
    wav = music_like(int(args.seconds * SR), batch=args.batch, seed=0)
    with torch.inference_mode():
        x = enc.subsampler(enc.frontend(wav))
    flops = conformer_flops(cfg, wav.shape[1], args.batch)
    enc_flops = flops["linear layers"] + flops["attention"]
    systems = {
        "mert": lambda: enc(wav, sample_rate=SR),
        "mert conformer": lambda: enc.transformer(x, None),
        "transformers Wav2Vec2ConformerEncoder": lambda: conformer(x),
    }
    if front is not None:
        systems["muq (package modules + transformers)"] = lambda: conformer(front(wav))
    with torch.inference_mode():
        ref = conformer(x).last_hidden_state
        ours = enc.transformer(x, None)[-1]
        err = (ref - ours).abs().max().item()
        times, ratios = _rounds(systems, args.repeats)
    peaks = gemm_peaks()
    print(machine_line())
    print("\nGEMM peaks (2048^3, this run): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    print(f"\n{cfg.name}, {cfg.num_layers} layers x {cfg.hidden_size}, {args.batch} x {args.seconds:g} s; "
          f"max |ours - transformers| on the last state: {err:.1e}\n")  # fmt: skip
    print("| system | s / pass (best) | its time / ours (best) | its time / ours (median of rounds) | GFLOP/s | "
          "share of fp32 peak |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    peak = max(peaks["fp32 oneDNN"], peaks["fp32 torch.mm"])
    for name, sec in times.items():
        whole = name in ("mert",) or name.startswith("muq")
        work = flops["total"] if whole else enc_flops
        ours = "mert" if whole else "mert conformer"
        median = sorted(r[name] / r[ours] for r in ratios)[len(ratios) // 2]
        gf = work / sec / 1e9
        print(f"| {name} | {sec:.3f} | {sec / times[ours]:.2f} | {median:.2f} | {gf:.0f} | {gf / peak:.0%} |")


def _rounds(fns: dict, repeats: int) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Best time of each system, and each round's times: the systems run in turn, so a round's ratios compare
    runs made under the same machine load."""
    for fn in fns.values():
        fn()  # warm-up: allocator, oneDNN primitive caches
    rounds = []
    for _ in range(repeats):
        r = {}
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            r[k] = time.perf_counter() - t0
        rounds.append(r)
    return {k: min(r[k] for r in rounds) for k in fns}, rounds


def run_small(args) -> None:
    wav = music_like(int(args.seconds * SR), batch=args.batch, seed=0)
    audio = args.batch * args.seconds
    configs = {"small": EncoderConfig.from_dict(_small_yaml())}
    configs["conformer_small"] = EncoderConfig.preset("conformer_small")
    steps, params = {}, {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        enc = Encoder(cfg).train()
        opt = torch.optim.AdamW(enc.parameters(), lr=1e-4)

        def step(enc=enc, opt=opt):
            out = enc(wav, sample_rate=SR)
            loss = out.last_hidden_state.float().pow(2).mean() + out.features.float().pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()  # warm-up
        steps[name], params[name] = step, sum(p.numel() for p in enc.parameters())
    # The models take turns, so each round's ratio compares steps made under the same machine load.
    rounds = []
    for _ in range(args.repeats):
        r = {}
        for name, step in steps.items():
            w0, c0 = time.perf_counter(), time.process_time()
            step()
            r[name] = (time.perf_counter() - w0, time.process_time() - c0)
        rounds.append(r)
    print(machine_line())
    print(f"\nTraining step (forward + backward + AdamW), batch {args.batch} x {args.seconds:g} s, {args.repeats} "
          "rounds\n")  # fmt: skip
    print("| model | parameters | frames/s | s / step (wall, best) | audio s per CPU s (best) | audio s per wall s "
          "(best) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, cfg in configs.items():
        wall, cpu = min(r[name][0] for r in rounds), min(r[name][1] for r in rounds)
        print(f"| {name} | {params[name] / 1e6:.2f} M | {cfg.frame_rate:g} | {wall:.3f} | {audio / cpu:.1f} | "
              f"{audio / wall:.1f} |")  # fmt: skip
    ratios = sorted(r["small"][1] / r["conformer_small"][1] for r in rounds)
    print(
        f"\nconformer_small / small, audio seconds per CPU second: median {ratios[len(ratios) // 2]:.2f}x over "
        f"{len(ratios)} rounds (range {ratios[0]:.2f}-{ratios[-1]:.2f})"
    )


def _small_yaml() -> dict:
    import yaml

    path = Path(__file__).resolve().parents[1] / "conf" / "model" / "small.yaml"
    return yaml.safe_load(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", default="muq_large")
    ap.add_argument("--layers", type=int, default=0, help="fewer blocks than the layout, for a quick run")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--small", action="store_true", help="conformer_small vs small, training throughput")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.small:
        run_small(args)
    else:
        run_encoders(args)


if __name__ == "__main__":
    main()
