"""Plain helpers shared by the tests (fixtures stay in ``conftest.py``).

Import them as ``from tests.helpers import music_like``; test modules never import from each other or from
``conftest.py``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from mert import Encoder, EncoderConfig
from mert.pretrain import MERTObjective
from mert.targets import Teacher


# --------------------------------------------------------------------------------------------- audio, encoders
def music_like(n: int, sr: int = 24000, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """A few harmonic tones plus noise: ``(batch, n)``; deterministic."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / sr
    out = []
    for _ in range(batch):
        f = 110 * 2 ** (torch.randint(0, 36, (3,), generator=g) / 12)
        x = sum(torch.sin(2 * torch.pi * fi * t) * (0.3 / (k + 1)) for k, fi in enumerate(f))
        out.append(x + 0.02 * torch.randn(n, generator=g))
    return torch.stack(out).float()


def perturb_vectors_(module: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Add ``scale * N(0, 1)`` to every 1-D parameter (norm affines, biases) in place, so none is the identity."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 1:
                p.add_(scale * torch.randn_like(p))
    return module


def perturbed_encoder(config: EncoderConfig, seed: int = 0) -> Encoder:
    """``Encoder(config)`` seeded, in eval mode, with its 1-D parameters perturbed (:func:`perturb_vectors_`)."""
    torch.manual_seed(seed)
    return perturb_vectors_(Encoder(config).eval())


# ------------------------------------------------------------------------- Hugging Face reference models
def hf_config(layout: str, size: str = "small", **overrides):
    """A transformers HubertConfig with MERT-v1's structure: layout "95m" (post-LN, GroupNorm), "330m" (pre-LN,
    GroupNorm: MERT-v1-330M's config.json has feat_extract_norm "group") or "hubert_layer" (pre-LN with a
    LayerNorm after every conv: HuBERT-large's layout, valid for transformers but not a MERT-v1 model)."""
    from transformers import HubertConfig

    if size == "full":
        dims = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
        if layout in ("330m", "hubert_layer"):
            dims = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
        conv, pos_k, pos_g = 512, 128, 16
    else:  # small but structurally identical: real strides/kernels, 3 layers, even pos-conv kernel
        dims = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128)
        conv, pos_k, pos_g = 48, 16, 4
    kw = dict(
        conv_dim=[conv] * 7,
        conv_kernel=[10, 3, 3, 3, 3, 2, 2],
        conv_stride=[5, 2, 2, 2, 2, 2, 2],
        conv_bias=False,
        feat_extract_norm="layer" if layout == "hubert_layer" else "group",
        do_stable_layer_norm=layout in ("330m", "hubert_layer"),
        num_conv_pos_embeddings=pos_k,
        num_conv_pos_embedding_groups=pos_g,
        layer_norm_eps=1e-5,
        feat_proj_layer_norm=True,
        **dims,
    )
    kw.update(overrides)
    return HubertConfig(**kw)


def perturbed_hf_model(config, seed: int = 0):
    """HubertModel with every parameter randomised, so LayerNorm affines and biases are exercised too."""
    from transformers import HubertModel

    torch.manual_seed(seed)
    model = HubertModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "original0" in name or "weight_g" in name:  # weight-norm gain: keep positive and sized like ||v||
                p.mul_(1.0 + 0.2 * torch.rand_like(p))
            elif p.dim() == 1 and ("norm" in name):
                p.add_(0.1 * torch.randn_like(p))
            elif p.dim() == 1:
                p.normal_(0, 0.05)
    return model


def save_hf_folder(
    model,
    folder: Path,
    *,
    fmt: str = "safetensors",
    naming: str = "new",
    model_type: str = "hubert",
    sample_rate: int = 24000,
) -> Path:
    """Write ``model`` the way checkpoints appear on disk: config.json + model.safetensors or pytorch_model.bin.

    naming "old" renames the weight-norm tensors to ``weight_g``/``weight_v`` as in the published MERT files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if naming == "old":
        state = {
            k.replace("parametrizations.weight.original0", "weight_g").replace(
                "parametrizations.weight.original1", "weight_v"
            ): v
            for k, v in state.items()
        }
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, folder / "pytorch_model.bin")
    cfg = model.config.to_dict()
    cfg["model_type"] = model_type
    cfg["sample_rate"] = sample_rate
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_normalize": False,
                "feature_extractor_type": "Wav2Vec2FeatureExtractor",
                "feature_size": 1,
                "padding_side": "right",
                "padding_value": 0,
                "return_attention_mask": True,
                "sampling_rate": sample_rate,
            }
        )
    )
    return folder


# --------------------------------------------------------------------------------------- pretraining objective
class RecordingTeacher(Teacher):
    """A test teacher whose ``calls`` records every waveform it was asked about, so a test can tell whether it ran;
    subclasses write ``targets``."""

    def __init__(self):
        super().__init__()
        self.calls: list[torch.Tensor] = []
        self.freeze()

    def compute(self, wav):
        self.calls.append(wav.clone())
        return self.targets(wav)


class FrameStatsCodes(RecordingTeacher):
    """A small deterministic code teacher: quantised log-energy and zero-crossing rate per encoder frame."""

    kind = "codes"
    num_codebooks = 2
    codebook_size = 16

    def targets(self, wav):
        frames = wav.unfold(-1, 400, 320)  # (b, t, 400): exactly the encoder's receptive fields
        energy = frames.pow(2).mean(-1).add(1e-8).log10()  # about -8 .. 0
        zcr = (frames[..., 1:] * frames[..., :-1] < 0).float().mean(-1)
        c0 = ((energy + 8) * 2).clamp(0, 15).long()
        c1 = (zcr * 40).clamp(0, 15).long()
        return torch.stack([c0, c1], dim=-1)


class BandEnergies(RecordingTeacher):
    """A small feature teacher: log energy in 8 linear bands per encoder frame."""

    kind = "features"
    dim = 8

    def targets(self, wav):
        spec = torch.fft.rfft(wav.unfold(-1, 400, 320), dim=-1).abs()[..., :200]
        return rearrange(spec, "b t (f w) -> b t f w", f=8).pow(2).mean(-1).add(1e-6).log()


def make_objective(**kw) -> MERTObjective:
    """A tiny encoder (seed 0) with both small teachers; ``kw`` go to :class:`MERTObjective`."""
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.preset("tiny"))
    return MERTObjective(enc, FrameStatsCodes(), BandEnergies(), final_dim=16, **kw)


# --- loopback HTTP servers and download caches (tests/test_hub.py, tests/test_registry.py) -----------------------


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]):
    """Run ``handler`` on an ephemeral loopback port in a daemon thread; yield the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


class HubHandler(Quiet):
    """A fake Hugging Face Hub's handler: HEAD and GET both go to :meth:`respond`, which subclasses write."""

    def do_HEAD(self) -> None:
        self.respond(body=False)

    def do_GET(self) -> None:
        self.respond(body=True)

    def respond(self, body: bool) -> None:
        raise NotImplementedError

    def resolve_parts(self) -> tuple[str, str, str] | None:
        """``(repo, revision, filename)`` of a ``/{owner}/{name}/resolve/{revision}/{filename}`` request, else None."""
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", urllib.parse.urlsplit(self.path).path)
        return match.groups() if match else None


def cached_files(cache: Path) -> list[Path]:
    """Everything in a cache folder except lock files."""
    return sorted(p for p in cache.rglob("*") if p.is_file() and p.name != ".lock")


# --------------------------------------------------------------------------------------------- teachers
def synthetic_clips(seconds: float, seeds: tuple[int, ...] = (0, 1), sample_rate: int = 24000) -> torch.Tensor:
    """Synthetic music ``(len(seeds), l)`` from :func:`mert.data.synthetic.render_clip`."""
    from mert.data.synthetic import render_clip

    return torch.stack([torch.from_numpy(render_clip(seconds, sample_rate, seed)[0]) for seed in seeds])


def filled_encodec(seed: int = 0):
    """A randomly initialised EnCodec 24 kHz whose codebooks are filled, so its codes are not constant.

    A random encoder's output hardly moves over time (per-channel std over time ~1e-3 around offsets of
    ~3e-2), so codebooks drawn from N(0, 1) would still map every frame to one code. Each codebook is drawn
    around the statistics of what it quantises (the encoder output, then the successive residuals), which is
    what EnCodec's own k-means initialisation would do.
    """
    import warnings

    from encodec import EncodecModel

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # encodec uses the deprecated weight_norm
        model = EncodecModel.encodec_model_24khz(pretrained=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        residual = model.encoder(synthetic_clips(1.0, (10, 11))[:, None]).transpose(1, 2).flatten(0, 1)  # (n, 128)
        for layer in model.quantizer.vq.layers:
            book = layer._codebook
            book.embed.copy_(residual.mean(0) + residual.std(0) * torch.randn(book.embed.shape, generator=gen))
            book.inited.fill_(1)
            residual = residual - book.embed[book.quantize(residual)]
    model.set_target_bandwidth(6.0)
    return model.eval()


def timbre_clip(seconds: float, timbre: str, tempo_bpm: float, seed: int, sr: int = 16000) -> np.ndarray:
    """Eighth notes in one simple timbre (sine, saw or pluck) over a kick on every beat (beat ``k`` at
    ``k * 60 / tempo_bpm`` s): labels a tiny random encoder separates, so these tests check the probe machinery;
    ``render_clip``'s realistic instruments, rooms and noise make a harder task than they need."""
    rng = np.random.default_rng(seed)
    n, beat_n = int(seconds * sr), int(60.0 / tempo_bpm * sr)
    note_n = beat_n // 2
    t = np.arange(note_n) / sr
    partials = {
        "sine": [(1, 1.0)],
        "saw": [(k, 1.0 / k) for k in range(1, 16)],
        "pluck": [(k, 0.8**k) for k in range(1, 10)],
    }
    out = np.zeros(n + note_n)
    for start in range(0, n, note_n):
        f = 220.0 * 2 ** (int(rng.integers(0, 15)) / 12)
        x = sum(a * np.sin(2 * np.pi * f * k * t) for k, a in partials[timbre] if f * k < sr / 2)
        out[start : start + note_n] += 0.25 * x * np.exp(-(8.0 if timbre == "pluck" else 1.5) * t)
    kick = np.sin(2 * np.pi * (50 + 60 * np.exp(-30 * t)) * t) * np.exp(-25 * t)
    for start in range(0, n, beat_n):
        out[start : start + note_n] += 0.5 * kick
    out = out[:n] + 1e-3 * rng.standard_normal(n)
    return (0.9 * out / np.abs(out).max()).astype(np.float32)


# A fake Hugging Face Hub that knows a pinned commit.
MAIN_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


class PinnedHub:
    """Answers ``/{repo}/resolve/{revision}/{file}`` for ``main`` (= MAIN_COMMIT) and the 95M entry's pin."""

    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        from mert.registry import lookup_checkpoint

        self.repos = repos
        self.pin = lookup_checkpoint("MERT-v1-95M").revision
        self.paths: list[str] = []
        self.url = ""

    def revisions(self) -> set[str]:
        return {re.fullmatch(r"/[^/]+/[^/]+/resolve/([^/]+)/.+", p).group(1) for p in self.paths}

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hub, pin = self, self.pin

        class Handler(HubHandler):
            def respond(self, body: bool) -> None:
                hub.paths.append(urllib.parse.urlsplit(self.path).path)
                repo, revision, filename = self.resolve_parts()
                commit = {"main": MAIN_COMMIT, MAIN_COMMIT: MAIN_COMMIT, pin: pin}.get(revision)
                files = hub.repos.get(repo, {})
                status, data = (200, files[filename]) if commit and filename in files else (404, b"")
                self.send_response(status)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                if status == 404:
                    self.send_header("X-Error-Code", "EntryNotFound" if commit else "RevisionNotFound")
                else:
                    self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

        return Handler


# `mert probe` settings for the small-set tests: a random tiny encoder, the quick protocol, few epochs.
QUICK_PROBE_ARGS = [
    "encoder=random:tiny",
    "protocol=quick",
    "probe.max_epochs=5",
    "progress=false",
    "features.window_seconds=1.0",
]


# --- what a pretraining run logged (csv logger) ------------------------------------------------------------------
def logged_rows(run_dir: Path) -> list[dict[str, str]]:
    """Every row of a run's ``csv/version_N/metrics.csv``, one folder per launch, launches in order."""
    rows = []
    for f in sorted((Path(run_dir) / "csv").glob("version_*/metrics.csv")):
        with open(f) as fh:
            rows.extend(csv.DictReader(fh))
    return rows


def logged_column(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    """``{step: value}`` of one logged metric (default the training loss), over every launch of the run."""
    return {int(r["step"]): float(r[key]) for r in logged_rows(run_dir) if r.get(key)}

