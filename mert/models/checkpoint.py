"""Reading and writing encoder checkpoints without executing code.

Two on-disk layouts are understood:

* ours: ``config.json`` (``model_type: "mert"``, the :class:`EncoderConfig` fields), ``model.safetensors``
  whose metadata repeats the config (so the file alone is enough), and optionally ``meta.json``;
* Hugging Face MERT/HuBERT: ``config.json`` with ``model_type`` ``mert_model`` or ``hubert``,
  ``model.safetensors`` and/or ``pytorch_model.bin`` (loaded with ``weights_only=True``). Keys are renamed
  and the q/k/v projections fused on the fly; both weight-norm namings (``weight_g/weight_v`` and
  ``parametrizations.weight.original0/1``) are accepted.

:func:`save_hf_checkpoint` writes the second layout (``model_type: "hubert"``, transformers' key names), so
``transformers.HubertModel.from_pretrained`` / ``AutoModel.from_pretrained`` load our encoders without remote
code; its ``config.json`` also carries our :class:`EncoderConfig` (``mert_config``), so loading it back here
gives exactly the model that was saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mert.download import is_safetensors
from mert.models.config import CONFIG_FORMAT, EncoderConfig
from mert.models.modules import EncoderNetwork
from mert.registry import WEIGHT_FILES
from mert.version import __version__

__all__ = [
    "weights_sha256",
    "load_checkpoint",
    "save_checkpoint",
    "save_hf_checkpoint",
    "hf_config_to_encoder_config",
    "encoder_config_to_hf_config",
    "convert_hf_state_dict",
    "to_hf_state_dict",
    "check_keys",
    "is_mert_v2_config",
    "is_muq_config",
    "mert_v2_config_to_encoder_config",
    "muq_config_to_encoder_config",
    "convert_mert_v2_state_dict",
    "to_mert_v2_state_dict",
    "convert_muq_state_dict",
]


def weights_sha256(weights: Mapping[str, Tensor]) -> str:
    """SHA-256 over the tensors' names, shapes, dtypes and bytes, in name order: the identity of a set of weights
    whatever file layout holds them (used by fitted teachers, the second-iteration teacher and exports)."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


HF_MODEL_TYPES = ("mert_model", "hubert", "data2vec-audio")
METADATA_CONFIG_KEY = "mert_config"


# --------------------------------------------------------------------------------------------- reading
def load_checkpoint(path: str | os.PathLike) -> tuple[EncoderConfig, dict[str, Tensor], dict[str, Any]]:
    """Load ``(config, state_dict in our key names, meta)`` from a checkpoint folder or weights file.

    Raises:
        FileNotFoundError: the path does not exist, or a folder holds no weights file.
        ValueError: the config is for another model type, or the weights do not fit the config.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {str(path)!r} does not exist")
    if path.is_dir():
        weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
        if weights is None:
            present = sorted(p.name for p in path.iterdir())[:20]
            raise FileNotFoundError(
                f"no weights file in {str(path)!r}: expected one of {list(WEIGHT_FILES)}, found {present}"
                f"{_run_hint(path)}"
            )
        folder = path
    else:
        weights, folder = path, path.parent

    state, file_meta = _read_weights(weights)
    meta = _read_json(folder / "meta.json") if (folder / "meta.json").is_file() else {}

    _check_finite(state, weights)
    config_file = folder / "config.json"
    if METADATA_CONFIG_KEY in file_meta:  # our safetensors: the config travels inside the file
        where = f"{str(weights)!r} (safetensors metadata {METADATA_CONFIG_KEY!r})"
        config = _parse_config(lambda: EncoderConfig.from_dict(_loads(file_meta[METADATA_CONFIG_KEY])), where)
        if config_file.is_file():
            _warn_if_config_json_differs(config_file, config, weights)
        return config, check_keys(state, config, weights), meta
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{str(weights)!r} carries no config and there is no config.json beside it; "
            "a MERT checkpoint needs its config.json (Hugging Face layout) or our safetensors metadata"
            f"{_run_hint(weights)}"
        )
    raw = _read_json(config_file)
    model_type = raw.get("model_type")
    if is_mert_v2_config(raw):
        config = mert_v2_config_to_encoder_config(raw, source=str(config_file))
        return config, check_keys(convert_mert_v2_state_dict(state), config, weights), meta
    if is_muq_config(raw):
        config = muq_config_to_encoder_config(raw, source=str(config_file))
        return config, check_keys(convert_muq_state_dict(state, config, raw), config, weights), meta
    if model_type == CONFIG_FORMAT:
        config = _parse_config(lambda: EncoderConfig.from_dict(raw), repr(str(config_file)))
        return config, check_keys(state, config, weights), meta
    if model_type in HF_MODEL_TYPES:
        pre_file = folder / "preprocessor_config.json"
        pre = _read_json(pre_file) if pre_file.is_file() else None
        where = repr(str(config_file))
        config = _parse_config(lambda: hf_config_to_encoder_config(raw, pre, source=str(config_file)), where)
        if isinstance(raw.get(METADATA_CONFIG_KEY), dict):  # our HF export: the exact config travels along
            where = f"{str(config_file)!r} (key {METADATA_CONFIG_KEY!r})"
            ours = _parse_config(lambda: EncoderConfig.from_dict(raw[METADATA_CONFIG_KEY]), where)
            if _hf_structure(ours) != _hf_structure(config):
                raise ValueError(
                    f"{str(config_file)!r}: its {METADATA_CONFIG_KEY!r} entry contradicts the HubertConfig keys "
                    "beside it (edited by hand?); fix or remove one of them"
                )
            config = ours
        return config, check_keys(convert_hf_state_dict(state, config), config, weights), meta
    raise ValueError(
        f"{str(config_file)!r} has model_type {model_type!r}; expected {CONFIG_FORMAT!r} (a mert export), "
        f"one of {list(HF_MODEL_TYPES)} (a Hugging Face MERT/HuBERT checkpoint), a MERT-v2 config (with "
        "subsampling_channels) or a MuQ config (with encoder_dim and w2v2_config)"
    )


def _run_hint(path: Path) -> str:
    """Advice for a pretraining run folder or a Lightning ``.ckpt`` given where a release is expected."""
    run = path.parent.parent if path.suffix == ".ckpt" else path
    if path.suffix == ".ckpt" or (run / "checkpoints").is_dir() or (run / "config.yaml").is_file():
        return (
            f"; {str(path)!r} looks like a pretraining run or its checkpoint: turn it into a loadable model with "
            f"`mert export {str(path)} OUT` and pass OUT"
        )
    return ""


def _check_finite(state: dict[str, Tensor], source: Path) -> None:
    """Refuse weights holding NaN or inf (a damaged file would otherwise give NaN embeddings, silently)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(
            f"{str(source)!r} holds non-finite weights (NaN or inf) in {bad[:5]}{more}: the file is damaged"
        )


def _warn_if_config_json_differs(config_file: Path, config: EncoderConfig, weights: Path) -> None:
    """Our safetensors carry their config, which wins over a config.json beside them: say so when they differ."""
    raw: Any = None
    try:
        raw = json.loads(config_file.read_text())
        same = raw.get("model_type") == CONFIG_FORMAT and EncoderConfig.from_dict(raw) == config
    except (ValueError, TypeError, AttributeError):
        same = False
    if not same:
        warnings.warn(
            f"{str(config_file)!r} does not describe the model in {str(weights)!r} (model_type "
            f"{raw.get('model_type') if isinstance(raw, dict) else None!r}); using the config stored inside "
            f"{weights.name}",
            stacklevel=3,
        )


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint folder; anything else (a list, null, a number) is refused naming the file."""
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object ({{...}}), got {type(obj).__name__} {obj!r:.40}")
    return obj


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e}") from None


def _parse_config(build: Callable[[], EncoderConfig], where: str) -> EncoderConfig:
    """Run ``build`` and turn any complaint about the untrusted values into one ``ValueError`` naming ``where``.

    Sizes, types and ranges are checked by :meth:`EncoderConfig.validate` before any module exists.
    """
    try:
        return build()
    except (ValueError, TypeError, AttributeError, OverflowError) as e:
        if isinstance(e, ValueError) and where.split("'")[1] in str(e):
            raise  # already names the file
        raise ValueError(f"{where}: invalid encoder config: {e}") from None


def _read_weights(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and (for safetensors) the header metadata; pickles are opened with ``weights_only=True``."""
    # By the header, not the name: a downloaded file is named after its URL ("weights", "download?id=3").
    if path.suffix == ".safetensors" or is_safetensors(path):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
        except SafetensorError as e:
            raise ValueError(f"{str(path)!r} is not a readable safetensors file: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses arbitrary pickles; a truncated file fails to unpickle
        raise ValueError(
            f"{str(path)!r} is neither a safetensors file nor a plain PyTorch state dict ({load_error_reason(e)}); "
            "only tensors are read from checkpoints, never code"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors")
    return obj, {}


def load_error_reason(err: BaseException) -> str:
    """The useful part of a ``torch.load(weights_only=True)`` failure, in one line.

    torch's message advises re-running with ``weights_only=False`` (which executes whatever the file holds) or
    allow-listing the file's globals: that advice is dropped here, so no error of ours passes it on.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch highlights its advice with terminal colours
    if match := re.search(r"WeightsUnpickler error:\s*(.*)", text, re.DOTALL):
        text = match.group(1)  # the reason; everything before it is advice
    parts = [p.strip() for p in re.split(r"\n+|(?<=\.) +(?=[A-Z])", text)]  # lines, then sentences
    noise = re.compile(r"weights.only|file an issue|documentation|safe_globals|allowlist|trust|option", re.IGNORECASE)
    keep = [p for p in parts if p and not noise.search(p)]
    return f"{type(err).__name__}: {'; '.join(keep) or 'unreadable'}"


# --------------------------------------------------------------------------------------------- HF conversion
def hf_config_to_encoder_config(
    hf: dict[str, Any], preprocessor: dict[str, Any] | None = None, source: str = "config.json"
) -> EncoderConfig:
    """Translate a transformers HubertConfig / MERTConfig mapping into :class:`EncoderConfig`."""
    for key, expected in (("hidden_act", "gelu"), ("feat_extract_activation", "gelu")):
        if hf.get(key, expected) != expected:
            raise ValueError(f"{source}: {key}={hf[key]!r} is not supported (MERT uses {expected!r})")
    if hf.get("conv_pos_batch_norm", False):
        raise ValueError(f"{source}: conv_pos_batch_norm=True is not a MERT architecture")
    data2vec = hf.get("model_type") == "data2vec-audio"
    # data2vec-audio (music2vec) always has a LayerNorm after every front-end conv and a post-LN encoder.
    norm = "layer" if data2vec else hf.get("feat_extract_norm", "group")
    # Defaults below are transformers' HubertConfig / Data2VecAudioConfig defaults, used when a key is absent.
    sample_rate = int(hf.get("sample_rate", (preprocessor or {}).get("sampling_rate", 16000)))
    # Without a preprocessor_config.json (music2vec-v1 ships none; it is used with facebook/data2vec-audio-base-
    # 960h's feature extractor, which normalises), data2vec models get normalised input; HuBERT/MERT do not.
    normalize = bool((preprocessor or {}).get("do_normalize", data2vec and preprocessor is None))
    if data2vec:
        pos = dict(
            pos_conv="stack",
            pos_conv_kernel=int(hf.get("conv_pos_kernel_size", 19)),
            pos_conv_layers=int(hf.get("num_conv_pos_embeddings", 5)),
        )
    else:
        pos = dict(pos_conv="weight_norm", pos_conv_kernel=int(hf.get("num_conv_pos_embeddings", 128)))
    if preprocessor and "sampling_rate" in preprocessor and int(preprocessor["sampling_rate"]) != sample_rate:
        raise ValueError(
            f"{source}: sample_rate {sample_rate} disagrees with preprocessor_config.json sampling_rate "
            f"{preprocessor['sampling_rate']}"
        )
    return EncoderConfig(
        name=str(hf.get("_name_or_path") or hf.get("model_type")),
        sample_rate=sample_rate,
        normalize_input=normalize,
        conv_dim=tuple(hf.get("conv_dim", (512,) * 7)),
        conv_kernel=tuple(hf.get("conv_kernel", (10, 3, 3, 3, 3, 2, 2))),
        conv_stride=tuple(hf.get("conv_stride", (5, 2, 2, 2, 2, 2, 2))),
        conv_bias=bool(hf.get("conv_bias", False)),
        frontend_norm=norm,
        feat_proj_layer_norm=bool(hf.get("feat_proj_layer_norm", True)),
        # Not in HF configs; MERT-v1 training hyper-parameters: 0.1 for the post-LN 95M recipe, 1.0 for the pre-LN 330M
        # one. Both use a GroupNorm front end, so the layout that tells them apart is the LayerNorm placement.
        frontend_grad_mult=1.0 if hf.get("do_stable_layer_norm", False) else 0.1,
        hidden_size=int(hf.get("hidden_size", 768)),
        num_layers=int(hf.get("num_hidden_layers", 12)),
        num_heads=int(hf.get("num_attention_heads", 12)),
        ffn_size=int(hf.get("intermediate_size", 3072)),
        pre_ln=bool(hf.get("do_stable_layer_norm", False)) and not data2vec,
        **pos,
        pos_conv_groups=int(hf.get("num_conv_pos_embedding_groups", 16)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
        hidden_dropout=float(hf.get("hidden_dropout", 0.1)),
        attention_dropout=float(hf.get("attention_dropout", 0.1)),
        activation_dropout=float(hf.get("activation_dropout", 0.1)),
        feat_proj_dropout=float(hf.get("feat_proj_dropout", 0.0)),
        layerdrop=float(hf.get("layerdrop", 0.1)),
    )


# Every weight group once, as (transformers' HubertModel key, ours): both directions are built from this table,
# so they stay inverses. "{i}" stands for a layer index; a name ending in "." is a prefix, any other a whole key.
# Rows marked read-only are understood when loading but never written: the older weight-norm names
# (torch.nn.utils.weight_norm) and data2vec-audio's stacked positional convs, which HubertModel cannot hold.
_KEY_MAP: list[tuple[str, str, bool]] = [  # (hf, ours, read_only)
    ("feature_extractor.conv_layers.{i}.conv.", "frontend.convs.{i}.conv.", False),
    ("feature_extractor.conv_layers.{i}.layer_norm.", "frontend.convs.{i}.norm.", False),
    ("feature_projection.layer_norm.", "proj.norm.", False),
    ("feature_projection.projection.", "proj.linear.", False),
    ("encoder.pos_conv_embed.conv.parametrizations.weight.original0", "transformer.pos_conv.weight_g", False),
    ("encoder.pos_conv_embed.conv.weight_g", "transformer.pos_conv.weight_g", True),
    ("encoder.pos_conv_embed.conv.parametrizations.weight.original1", "transformer.pos_conv.weight_v", False),
    ("encoder.pos_conv_embed.conv.weight_v", "transformer.pos_conv.weight_v", True),
    ("encoder.pos_conv_embed.conv.bias", "transformer.pos_conv.bias", False),
    ("encoder.pos_conv_embed.layers.{i}.conv.", "transformer.pos_conv.convs.{i}.", True),
    ("encoder.layer_norm.", "transformer.norm.", False),
    ("encoder.layers.{i}.attention.out_proj.", "transformer.layers.{i}.attn.out.", False),
    ("encoder.layers.{i}.layer_norm.", "transformer.layers.{i}.attn_norm.", False),
    ("encoder.layers.{i}.feed_forward.intermediate_dense.", "transformer.layers.{i}.ffn.fc1.", False),
    ("encoder.layers.{i}.feed_forward.output_dense.", "transformer.layers.{i}.ffn.fc2.", False),
    ("encoder.layers.{i}.final_layer_norm.", "transformer.layers.{i}.ffn_norm.", False),
    ("masked_spec_embed", "mask_emb", False),
]


def _key_pattern(name: str) -> str:
    """A ``_KEY_MAP`` name as a regex: literal dots, ``{i}`` a captured index, whole keys anchored at the end."""
    pattern = re.escape(name).replace(re.escape("{i}"), r"(\d+)")
    return pattern if name.endswith(".") else pattern + "$"


def _key_replacement(name: str) -> str:
    return name.replace("{i}", r"\1")


def _rename(key: str, table: list[tuple[str, str]]) -> str | None:
    """``key`` renamed by the first ``(pattern, replacement)`` row of ``table`` that matches it, or None."""
    for pattern, repl in table:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


# HF -> ours matches anywhere in the key (after a wrapper prefix is stripped); ours -> HF from the start.
_HF_RENAMES = [(_key_pattern(hf), _key_replacement(ours)) for hf, ours, _ in _KEY_MAP]
_QKV = re.compile(r"encoder\.layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$")


def convert_hf_state_dict(state: dict[str, Tensor], config: EncoderConfig) -> dict[str, Tensor]:
    """Rename HF HubertModel keys to ours and fuse q/k/v into one projection.

    Keys that belong to no encoder part (pretraining heads kept in some exports) are dropped with a warning.
    """
    prefixes = {k.split(".", 1)[0] for k in state}
    if len(prefixes) == 1 and next(iter(prefixes)) in ("hubert", "mert", "model"):
        state = {k.split(".", 1)[1]: v for k, v in state.items()}  # wrapped models save under a prefix
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    dropped = []
    for key, value in state.items():
        if m := _QKV.match(key):
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        if key == "encoder.pos_conv_embed.conv.weight":  # weight norm already folded in: recover g and v
            out["transformer.pos_conv.weight_v"] = value
            out["transformer.pos_conv.weight_g"] = value.norm(dim=(0, 1), keepdim=True)
            continue
        if (new := _rename(key, _HF_RENAMES)) is None:
            dropped.append(key)
        else:
            out[new] = value
    for (layer, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"layer {layer}: attention {kind} has only {sorted(parts)} of q/k/v projections")
        out[f"transformer.layers.{layer}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if dropped:
        warnings.warn(
            f"ignoring {len(dropped)} checkpoint entries that are not encoder weights: {dropped[:8]}", stacklevel=2
        )
    return out


def check_keys(state: dict[str, Tensor], config: EncoderConfig, source: Path) -> dict[str, Tensor]:
    """Fail with the names of missing / unexpected / mis-shaped weights instead of a generic load error.

    Returns ``state``. Raises ``ValueError`` naming ``source`` if ``state`` does not hold exactly the weights of
    the network ``config`` describes (built on the meta device, so nothing is allocated).
    """
    with torch.device("meta"):
        reference = EncoderNetwork(config).state_dict()
    expected = {k: v.shape for k, v in reference.items()}
    state = _check_dtypes(state, {k: v.is_floating_point() for k, v in reference.items()}, source)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(s)}" for k, s in expected.items() if k in state and state[k].shape != s
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"weights in {str(source)!r} do not fit the config ({config.num_layers} layers, width "
            f"{config.hidden_size}): missing {missing[:6]}, unexpected {unexpected[:6]}, shape mismatches {shapes[:6]}"
        )
    return state


def _check_dtypes(state: dict[str, Tensor], floating: dict[str, bool], source: Path) -> dict[str, Tensor]:
    """Weights the network holds in floating point must be floating point (``floating``: key -> whether it is);
    mixed float precisions, which fail at the first forward pass, become float32. Integer buffers (BatchNorm's
    ``num_batches_tracked``) stay as they are.

    Returns ``state`` (converted when mixed). Raises ``ValueError`` naming ``source`` and the first offending keys.
    """
    not_float = [f"{k} ({v.dtype})" for k, v in state.items() if floating.get(k, True) and not v.is_floating_point()]
    if not_float:
        raise ValueError(
            f"{str(source)!r} holds non-floating-point weights: {not_float[:4]}; every encoder weight must be "
            "float32, float16 or bfloat16 (a quantised checkpoint has to be dequantised first)"
        )
    dtypes: dict[torch.dtype, list[str]] = {}
    for k, v in state.items():
        if v.is_floating_point():
            dtypes.setdefault(v.dtype, []).append(k)
    if len(dtypes) > 1:
        summary = "; ".join(f"{len(keys)} in {d} (e.g. {keys[0]})" for d, keys in dtypes.items())
        warnings.warn(f"{str(source)!r} mixes weight precisions ({summary}); loading them all as float32", stacklevel=3)
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state


def _hf_structure(config: EncoderConfig) -> dict[str, Any]:
    """The fields a HubertConfig determines (architecture and input rate), for consistency checks."""
    return {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_HF}


# EncoderConfig fields that a HubertConfig does not hold: training-only or initialisation-only, or informative.
_NOT_IN_HF = ("frontend_grad_mult", "frontend_init", "name", "format", "hidden_dropout", "attention_dropout",
              "activation_dropout", "feat_proj_dropout", "layerdrop")  # fmt: skip


def encoder_config_to_hf_config(config: EncoderConfig) -> dict[str, Any]:
    """``config.json`` content for transformers' ``HubertConfig`` describing ``config``'s architecture.

    Raises ``ValueError`` for the data2vec layout (``pos_conv="stack"``), which ``HubertModel`` cannot hold.

    Dropouts and LayerDrop are written too (transformers applies them only in training); ``mert_config`` holds
    our full configuration for an exact round trip, and transformers keeps unknown keys as plain attributes.
    """
    if config.frontend != "conv" or config.block != "transformer":
        raise ValueError(
            f"the hf export writes transformers' HubertModel layout, which cannot hold this encoder (frontend="
            f"{config.frontend!r}, block={config.block!r}, the MERT-v2/MuQ family): use the mert format"
        )
    if config.pos_conv != "weight_norm":
        raise ValueError(
            "transformers' HubertModel has one weight-normalised positional conv; this encoder has the data2vec "
            "layout (pos_conv='stack'), which the hf export does not write yet: use the mert or onnx format"
        )
    return {
        "architectures": ["HubertModel"],
        "model_type": "hubert",
        "sample_rate": config.sample_rate,
        "conv_dim": list(config.conv_dim),
        "conv_kernel": list(config.conv_kernel),
        "conv_stride": list(config.conv_stride),
        "num_feat_extract_layers": len(config.conv_dim),
        "conv_bias": config.conv_bias,
        "feat_extract_norm": config.frontend_norm,
        "feat_extract_activation": "gelu",
        "feat_proj_layer_norm": config.feat_proj_layer_norm,
        "feat_proj_dropout": config.feat_proj_dropout,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.ffn_size,
        "hidden_act": "gelu",
        "do_stable_layer_norm": config.pre_ln,
        "num_conv_pos_embeddings": config.pos_conv_kernel,
        "num_conv_pos_embedding_groups": config.pos_conv_groups,
        "conv_pos_batch_norm": False,
        "layer_norm_eps": config.layer_norm_eps,
        "hidden_dropout": config.hidden_dropout,
        "attention_dropout": config.attention_dropout,
        "activation_dropout": config.activation_dropout,
        "layerdrop": config.layerdrop,
        "mask_time_prob": 0.05,  # > 0 so transformers builds `masked_spec_embed` and loads our mask embedding
        METADATA_CONFIG_KEY: config.to_dict(),
    }


_TO_HF = [("^" + _key_pattern(ours), _key_replacement(hf)) for hf, ours, read_only in _KEY_MAP if not read_only]
_OUR_QKV = re.compile(r"^transformer\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")


def to_hf_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our key names -> transformers' ``HubertModel`` names, with the fused q/k/v projection split in three.

    The inverse of :func:`convert_hf_state_dict` (round trip tested). Raises ``ValueError`` on a key that has no
    counterpart in ``HubertModel``.
    """
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        if m := _OUR_QKV.match(key):
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"encoder.layers.{m.group(1)}.attention.{name}_proj.{m.group(2)}"] = part
            continue
        if (new := _rename(key, _TO_HF)) is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"no transformers HubertModel counterpart for {unknown[:8]}")
    return out


# --------------------------------------------------------------------------------------------- writing
def save_checkpoint(
    folder: str | os.PathLike, config: EncoderConfig, state: dict[str, Tensor], meta: dict[str, Any] | None = None
) -> Path:
    """Write ``config.json``, ``model.safetensors`` (config repeated in its metadata) and ``meta.json``."""
    from safetensors.torch import save_file

    from mert.fileio import atomic_path, write_text_atomic

    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    # atomic_path: a random temp name beside the target, the usual file mode (safetensors writes 0600), and
    # never a half-written weights file under the real name.
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_CONFIG_KEY: json.dumps(config.to_dict()), "format": "pt"})
    write_text_atomic(folder / "config.json", config.to_json() + "\n")
    full_meta = {"mert_version": __version__, **(meta or {})}
    write_text_atomic(folder / "meta.json", json.dumps(full_meta, indent=2, sort_keys=True, default=str) + "\n")
    return folder


def save_hf_checkpoint(
    folder: str | os.PathLike, config: EncoderConfig, state: dict[str, Tensor], meta: dict[str, Any] | None = None
) -> Path:
    """Write a transformers-loadable folder: ``config.json`` (``model_type: "hubert"``), ``model.safetensors`` in
    ``HubertModel``'s key names, ``preprocessor_config.json`` (sampling rate, normalisation) and ``meta.json``.

    ``transformers.HubertModel.from_pretrained(folder)`` and ``AutoModel.from_pretrained(folder)`` load it
    without remote code and give our hidden states (tested); :func:`load_checkpoint` reads it back exactly.
    """
    from safetensors.torch import save_file

    from mert.fileio import atomic_path, write_text_atomic

    hf_config = encoder_config_to_hf_config(config)  # refuses layouts HubertModel cannot hold, before writing
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in to_hf_state_dict(state).items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_text_atomic(folder / "config.json", json.dumps(hf_config, indent=2) + "\n")
    preprocessor = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": config.sample_rate,
        "do_normalize": config.normalize_input,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": True,
    }
    write_text_atomic(folder / "preprocessor_config.json", json.dumps(preprocessor, indent=2) + "\n")
    full_meta = {"mert_version": __version__, "layout": "transformers HubertModel", **(meta or {})}
    write_text_atomic(folder / "meta.json", json.dumps(full_meta, indent=2, sort_keys=True, default=str) + "\n")
    return folder


# --------------------------------------------------------------------------------------------- MERT-v2 and MuQ
# The spectrogram + Conformer family's published layouts (docs/checkpoints.md, docs/architecture.md). Each table lists
# (published name, ours); "{i}" and "{j}" stand for indices; a name ending in "." is a prefix, any other a whole
# key. The attention's q/k/v projections are fused into our ``attn.qkv`` separately.
_MERT_V2_KEYS: list[tuple[str, str]] = [
    ("feature_extractor.spectrogram.window", "frontend.window"),
    ("feature_extractor.mel_scale.fb", "frontend.fb"),
    ("feature_extractor.mel_mean", "frontend.mel_mean"),
    ("feature_extractor.mel_std", "frontend.mel_std"),
    ("subsampling_module.{i}.resampling_layer.0.", "subsampler.stages.{i}.resample_norm."),
    ("subsampling_module.{i}.resampling_layer.2.", "subsampler.stages.{i}.resample."),
    ("subsampling_module.{i}.convnext_layers.{j}.depthwise_block.1.", "subsampler.stages.{i}.layers.{j}.dwconv."),
    ("subsampling_module.{i}.convnext_layers.{j}.pointwise_block.0.", "subsampler.stages.{i}.layers.{j}.norm."),
    ("subsampling_module.{i}.convnext_layers.{j}.pointwise_block.1.", "subsampler.stages.{i}.layers.{j}.fc1."),
    ("subsampling_module.{i}.convnext_layers.{j}.pointwise_block.3.", "subsampler.stages.{i}.layers.{j}.grn."),
    ("subsampling_module.{i}.convnext_layers.{j}.pointwise_block.4.", "subsampler.stages.{i}.layers.{j}.fc2."),
    ("layers.{i}.ffn1_layer_norm.", "transformer.layers.{i}.ffn1_norm."),
    ("layers.{i}.ffn1.w_1.", "transformer.layers.{i}.ffn1.fc1."),
    ("layers.{i}.ffn1.w_2.", "transformer.layers.{i}.ffn1.fc2."),
    ("layers.{i}.attn_layer_norm.", "transformer.layers.{i}.attn_norm."),
    ("layers.{i}.attn.out_proj.", "transformer.layers.{i}.attn.out."),
    ("layers.{i}.conv_module.layer_norm.", "transformer.layers.{i}.conv.norm."),
    ("layers.{i}.conv_module.conv_block.1.", "transformer.layers.{i}.conv.pw1."),
    ("layers.{i}.conv_module.conv_block.3.", "transformer.layers.{i}.conv.dw."),
    ("layers.{i}.conv_module.conv_block.4.1.", "transformer.layers.{i}.conv.mid_norm."),
    ("layers.{i}.conv_module.conv_block.6.", "transformer.layers.{i}.conv.pw2."),
    ("layers.{i}.ffn2_layer_norm.", "transformer.layers.{i}.ffn2_norm."),
    ("layers.{i}.ffn2.w_1.", "transformer.layers.{i}.ffn2.fc1."),
    ("layers.{i}.ffn2.w_2.", "transformer.layers.{i}.ffn2.fc2."),
    ("layers.{i}.final_layer_norm.", "transformer.layers.{i}.final_norm."),
]
_MERT_V2_QKV = ("layers.{i}.attn.", ("query_proj", "key_proj", "value_proj"))

_MUQ_KEYS: list[tuple[str, str]] = [
    ("conv.conv.{i}.", "subsampler.blocks.{i}."),
    ("conv.linear.", "subsampler.linear."),
    ("conformer.layers.{i}.ffn1_layer_norm.", "transformer.layers.{i}.ffn1_norm."),
    ("conformer.layers.{i}.ffn1.intermediate_dense.", "transformer.layers.{i}.ffn1.fc1."),
    ("conformer.layers.{i}.ffn1.output_dense.", "transformer.layers.{i}.ffn1.fc2."),
    ("conformer.layers.{i}.self_attn_layer_norm.", "transformer.layers.{i}.attn_norm."),
    ("conformer.layers.{i}.self_attn.linear_out.", "transformer.layers.{i}.attn.out."),
    ("conformer.layers.{i}.conv_module.layer_norm.", "transformer.layers.{i}.conv.norm."),
    ("conformer.layers.{i}.conv_module.pointwise_conv1.", "transformer.layers.{i}.conv.pw1."),
    ("conformer.layers.{i}.conv_module.depthwise_conv.", "transformer.layers.{i}.conv.dw."),
    ("conformer.layers.{i}.conv_module.batch_norm.", "transformer.layers.{i}.conv.mid_norm."),
    ("conformer.layers.{i}.conv_module.pointwise_conv2.", "transformer.layers.{i}.conv.pw2."),
    ("conformer.layers.{i}.ffn2_layer_norm.", "transformer.layers.{i}.ffn2_norm."),
    ("conformer.layers.{i}.ffn2.intermediate_dense.", "transformer.layers.{i}.ffn2.fc1."),
    ("conformer.layers.{i}.ffn2.output_dense.", "transformer.layers.{i}.ffn2.fc2."),
    ("conformer.layers.{i}.final_layer_norm.", "transformer.layers.{i}.final_norm."),
    ("conformer.layer_norm.", "transformer.norm."),
]
_MUQ_QKV = ("conformer.layers.{i}.self_attn.", ("linear_q", "linear_k", "linear_v"))
# In MuQ's files but not part of the encoder's forward pass: transformers builds a positional conv that its
# Conformer never calls, the rotary table is recomputed, and the rest are pretraining heads and tokenisers.
_MUQ_UNUSED = re.compile(
    r"^(conformer\.pos_conv_embed\.|conformer\.embed_positions\.|linear\.|cls_token$|quantizer_|rvq\.|recon_proj\.)"
)


def _index_pattern(name: str, anchor: bool = True) -> str:
    pattern = re.escape(name).replace(re.escape("{i}"), r"(\d+)").replace(re.escape("{j}"), r"(\d+)")
    return ("^" if anchor else "") + (pattern if name.endswith(".") else pattern + "$")


def _index_replacement(name: str) -> str:
    return name.replace("{i}", r"\1").replace("{j}", r"\2")


def _convert_family(
    state: dict[str, Tensor],
    table: list[tuple[str, str]],
    qkv: tuple[str, tuple[str, str, str]],
    ignore: re.Pattern | None,
    what: str,
) -> dict[str, Tensor]:
    """Rename ``state`` by ``table`` and fuse each layer's q/k/v projections into ``attn.qkv``."""
    renames = [(_index_pattern(a), _index_replacement(b)) for a, b in table]
    prefix, (q, k, v) = qkv
    qkv_re = re.compile(_index_pattern(prefix) + rf"({q}|{k}|{v})\.(weight|bias)$")
    out: dict[str, Tensor] = {}
    parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    dropped, ignored = [], []
    for key, value in state.items():
        if m := qkv_re.match(key):
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
        elif (new := _rename(key, renames)) is not None:
            out[new] = value
        elif ignore is not None and ignore.match(key):
            ignored.append(key)
        else:
            dropped.append(key)
    for (layer, kind), p in sorted(parts.items()):
        if set(p) != {q, k, v}:
            raise ValueError(f"{what} layer {layer}: attention {kind} has only {sorted(p)} of {[q, k, v]}")
        out[f"transformer.layers.{layer}.attn.qkv.{kind}"] = torch.cat([p[q], p[k], p[v]], dim=0)
    if dropped:
        warnings.warn(
            f"ignoring {len(dropped)} {what} checkpoint entries that are not encoder weights: {dropped[:8]}",
            stacklevel=3,
        )
    return out


def _strip_wrapper(state: dict[str, Tensor], known: tuple[str, ...]) -> dict[str, Tensor]:
    """Drop a wrapper prefix (``model.``, ``mert.``, ...) that every key shares, unless keys already start with
    one of ``known``."""
    if any(k.startswith(known) for k in state):
        return state
    prefixes = {k.split(".", 1)[0] for k in state}
    if len(prefixes) == 1 and all("." in k for k in state):
        return {k.split(".", 1)[1]: v for k, v in state.items()}
    return state


def is_mert_v2_config(raw: dict[str, Any]) -> bool:
    """True for a MERT-v2 ``config.json`` (its ConvNeXt subsampler keys)."""
    return "subsampling_channels" in raw or "subsampling_depths" in raw


def is_muq_config(raw: dict[str, Any]) -> bool:
    """True for a MuQ ``config.json`` (``MuQConfig``: ``encoder_dim`` and the Conformer's ``w2v2_config``)."""
    return "encoder_dim" in raw and isinstance(raw.get("w2v2_config"), dict)


def mert_v2_config_to_encoder_config(raw: dict[str, Any], source: str = "config.json") -> EncoderConfig:
    """A MERT-v2 ``config.json`` as :class:`EncoderConfig` (the ``mert_v2`` preset with the file's sizes).

    Keys read: ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``,
    ``layer_norm_eps``, ``conv_depthwise_kernel_size``, ``rotary_embedding_base``, ``subsampling_channels``,
    ``subsampling_depths``, ``subsampling_strides``, ``subsampling_layer_norm_eps``, ``sample_rate``,
    ``n_fft``/``hop_length``/``n_mels``; absent ones keep the published MERT-v2 values.
    """
    from mert.models.config import PRESETS

    base = PRESETS["mert_v2"]
    act = raw.get("hidden_act", "gelu")
    if act not in ("gelu", "swish", "silu"):
        raise ValueError(f"{source}: hidden_act={act!r} is not supported (MERT-v2 uses 'gelu')")
    if raw.get("position_embeddings_type", "rotary") != "rotary":
        pos = raw["position_embeddings_type"]
        raise ValueError(f"{source}: position_embeddings_type={pos!r}; only 'rotary' is supported")
    channels = tuple(raw.get("subsampling_channels", base.subsampler_channels))
    try:
        return base.replace(
            name=str(raw.get("_name_or_path") or "mert_v2"),
            sample_rate=int(raw.get("sample_rate", raw.get("sampling_rate", base.sample_rate))),
            n_fft=int(raw.get("n_fft", base.n_fft)),
            mel_hop=int(raw.get("hop_length", base.mel_hop)),
            n_mels=int(raw.get("n_mels", raw.get("num_mel_bins", base.n_mels))),
            subsampler_channels=channels,
            subsampler_depths=tuple(raw.get("subsampling_depths", base.subsampler_depths)),
            subsampler_strides=tuple(raw.get("subsampling_strides", base.subsampler_strides)),
            subsampler_eps=float(raw.get("subsampling_layer_norm_eps", base.subsampler_eps)),
            hidden_size=int(raw.get("hidden_size", base.hidden_size)),
            num_layers=int(raw.get("num_hidden_layers", base.num_layers)),
            num_heads=int(raw.get("num_attention_heads", base.num_heads)),
            ffn_size=int(raw.get("intermediate_size", base.ffn_size)),
            layer_norm_eps=float(raw.get("layer_norm_eps", base.layer_norm_eps)),
            conv_module_kernel=int(raw.get("conv_depthwise_kernel_size", base.conv_module_kernel)),
            rope_base=float(raw.get("rotary_embedding_base", base.rope_base)),
            activation="gelu" if act == "gelu" else "swish",
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: not a MERT-v2 configuration this library can build: {err}") from None


def muq_config_to_encoder_config(raw: dict[str, Any], source: str = "config.json") -> EncoderConfig:
    """A MuQ ``config.json`` (``MuQConfig``) as :class:`EncoderConfig` (the ``muq_large`` preset with its sizes).

    The Conformer's settings come from ``w2v2_config`` (transformers' Wav2Vec2ConformerConfig); only its rotary
    position layout is supported. ``label_rate`` 25 subsamples 4x in time, 50 2x, as MuQ does.
    """
    from mert.models.config import PRESETS

    base = PRESETS["muq_large"]
    w2v2 = raw["w2v2_config"]
    pos = w2v2.get("position_embeddings_type", "relative")
    if pos != "rotary":
        raise ValueError(f"{source}: w2v2_config.position_embeddings_type={pos!r}; only 'rotary' is supported")
    act = w2v2.get("hidden_act", "gelu")
    if act not in ("gelu", "swish", "silu"):
        raise ValueError(f"{source}: w2v2_config.hidden_act={act!r} is not supported (gelu or swish)")
    strides = {25: (2, 2), 50: (2, 1)}.get(int(raw.get("label_rate", 25)))
    if strides is None:
        raise ValueError(f"{source}: label_rate={raw.get('label_rate')!r}; MuQ subsamples to 25 or 50 Hz")
    if list(raw.get("features", ["melspec_2048"])) != ["melspec_2048"]:
        raise ValueError(f"{source}: features={raw.get('features')!r}; only ['melspec_2048'] is supported")
    try:
        return base.replace(
            name=str(raw.get("_name_or_path") or "muq"),
            mel_hop=int(raw.get("hop_length", base.mel_hop)),
            n_mels=int(raw.get("n_mels", base.n_mels)),
            subsampler_channels=(int(raw.get("conv_dim", 512)),),
            subsampler_strides=strides,
            hidden_size=int(raw.get("encoder_dim", base.hidden_size)),
            num_layers=int(raw.get("encoder_depth", base.num_layers)),
            num_heads=int(w2v2.get("num_attention_heads", base.num_heads)),
            ffn_size=int(w2v2.get("intermediate_size", base.ffn_size)),
            layer_norm_eps=float(w2v2.get("layer_norm_eps", base.layer_norm_eps)),
            conv_module_kernel=int(w2v2.get("conv_depthwise_kernel_size", base.conv_module_kernel)),
            rope_base=float(w2v2.get("rotary_embedding_base", base.rope_base)),
            activation="gelu" if act == "gelu" else "swish",
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: not a MuQ configuration this library can build: {err}") from None


def _unsqueeze_pointwise(out: dict[str, Tensor]) -> dict[str, Tensor]:
    """Pointwise convs stored as Linear weights ``(out, in)`` become our ``(out, in, 1)``."""
    for key, value in out.items():
        if re.search(r"\.conv\.pw[12]\.weight$", key) and value.dim() == 2:
            out[key] = value[..., None]
    return out


def convert_mert_v2_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """MERT-v2's published keys -> ours, q/k/v fused; a wrapper prefix shared
    by every key is dropped."""
    state = _strip_wrapper(state, ("feature_extractor.", "subsampling_module.", "layers."))
    return _unsqueeze_pointwise(_convert_family(state, _MERT_V2_KEYS, _MERT_V2_QKV, None, "MERT-v2"))


def to_mert_v2_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Ours -> MERT-v2's published key names (q/k/v split again): the inverse of :func:`convert_mert_v2_state_dict`.

    Raises ``ValueError`` on a key MERT-v2's layout has no place for (e.g. ``mask_emb``).
    """
    back = [(_index_pattern(b), _index_replacement(a)) for a, b in _MERT_V2_KEYS]
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        if m := re.match(r"^transformer\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$", key):
            for name, part in zip(("query_proj", "key_proj", "value_proj"), value.chunk(3, dim=0)):
                out[f"layers.{m.group(1)}.attn.{name}.{m.group(2)}"] = part
        elif (new := _rename(key, back)) is not None:
            out[new] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"no MERT-v2 counterpart for {unknown[:8]}")
    return out


def convert_muq_state_dict(state: dict[str, Tensor], config: EncoderConfig, raw: dict[str, Any]) -> dict[str, Tensor]:
    """MuQ's published keys (``model.conv.*``, ``model.conformer.*``) -> ours, q/k/v fused. MuQ stores no
    spectrogram buffers: the window and filterbank are torchaudio's (as its ``MelSpectrogram``) and the
    per-bin statistics its config's ``stat`` scalars."""
    from mert.models.conformer import MelFrontEnd

    state = _strip_wrapper(state, ("conv.", "conformer."))
    out = _unsqueeze_pointwise(_convert_family(state, _MUQ_KEYS, _MUQ_QKV, _MUQ_UNUSED, "MuQ"))
    with torch.device("cpu"):
        front = MelFrontEnd(config)
        front.reset_buffers()
    stat = raw.get("stat") or {}
    mean, std = stat.get("melspec_2048_mean"), stat.get("melspec_2048_std")
    if mean is None or std is None:
        raise ValueError("MuQ config.json has no stat.melspec_2048_mean/std: the spectrogram normalisation is unknown")
    front.mel_mean.fill_(float(mean))
    front.mel_std.fill_(float(std))
    for name, buf in front.named_buffers():
        out[f"frontend.{name}"] = buf
    return out
