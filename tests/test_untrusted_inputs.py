"""Untrusted checkpoints, configs and arguments are refused with one line naming the file, the key or the argument.

Every variant is built from a real tiny checkpoint by editing its state dict, metadata or ``config.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mert import Encoder, EncoderConfig
from mert.cli import main


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ck") / "base"
    Encoder("tiny").save_pretrained(folder)
    return folder


def _variant(base: Path, folder: Path, state=None, metadata=None, config=None, pickle=False) -> Path:
    """A copy of ``base`` with its weights, safetensors metadata or config.json replaced."""
    sd = load_file(base / "model.safetensors")
    with safe_open(str(base / "model.safetensors"), "pt") as f:
        md = dict(f.metadata())
    folder.mkdir(parents=True)
    weights = state(sd) if state is not None else sd
    if pickle:
        torch.save(weights, folder / "pytorch_model.bin")
    else:
        save_file(weights, folder / "model.safetensors", metadata=metadata(md) if metadata is not None else md)
    if config is not None:
        (folder / "config.json").write_text(config)
    return folder


def _with_config(md: dict, **changes) -> dict:
    config = json.loads(md["mert_config"])
    config.update(changes)
    return {**md, "mert_config": json.dumps(config)}


def _load_error(folder: Path) -> str:
    with pytest.raises(ValueError) as err:
        Encoder.from_pretrained(folder)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("text", ["[]", "null", "3", '"mert"'])
def test_config_json_that_is_not_an_object(base, tmp_path, text):
    folder = _variant(base, tmp_path / "c", config=text, pickle=True)
    message = _load_error(folder)
    assert str(folder / "config.json") in message and "must hold a JSON object" in message


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (lambda md: {**md, "mert_config": "[1,2]"}, "must be a JSON object"),
        (lambda md: {**md, "mert_config": "{not json"}, "not valid JSON"),
        (lambda md: _with_config(md, hidden_size=10**9), "hidden_size=1000000000 is beyond the supported maximum"),
        (lambda md: _with_config(md, num_layers=10**6), "num_layers=1000000 is beyond"),
        (lambda md: _with_config(md, conv_dim=[10**7] * 7), "conv_dim is beyond"),
        (lambda md: _with_config(md, num_heads="4"), "num_heads must be a positive integer, got '4'"),
        (lambda md: _with_config(md, hidden_dropout="0.1"), "hidden_dropout must be in"),
        (lambda md: _with_config(md, conv_kernel=7), "conv_kernel must be a list of integers"),
        (lambda md: _with_config(md, sample_rate=1), "sample_rate must be at least 1000"),
        (lambda md: _with_config(md, pos_conv_layers=10**9), "pos_conv_layers must be an integer in"),
    ],
)
def test_bad_metadata_config_names_the_file_and_key(base, tmp_path, metadata, expected):
    folder = _variant(base, tmp_path / "m", metadata=metadata)
    message = _load_error(folder)
    assert str(folder / "model.safetensors") in message and "'mert_config'" in message
    assert expected in message


def test_bad_config_json_values_name_the_file(base, tmp_path):
    config = json.loads((base / "config.json").read_text())
    folder = _variant(base, tmp_path / "c", config=json.dumps({**config, "ffn_size": 10**12}), pickle=True)
    assert "ffn_size=1000000000000 is beyond" in _load_error(folder)
    hf = {"model_type": "hubert", "hidden_size": "big"}
    folder = _variant(base, tmp_path / "hf", config=json.dumps(hf), pickle=True)
    assert str(folder / "config.json") in _load_error(folder)


def test_mixed_precision_weights_are_unified_at_load(base, tmp_path):
    folder = _variant(
        base, tmp_path / "fp16", state=lambda sd: {k: v.half() if "fc1" in k else v for k, v in sd.items()}
    )
    with pytest.warns(UserWarning, match="mixes weight precisions.*float32"):
        enc = Encoder.from_pretrained(folder)
    assert {p.dtype for p in enc.parameters()} == {torch.float32}
    out = enc(torch.randn(4800), sample_rate=24000)  # used to fail here: "mat1 and mat2 must have the same dtype"
    assert torch.isfinite(out.last_hidden_state).all()


def test_integer_weights_in_a_float_slot_are_refused(base, tmp_path):
    def int8(sd):
        key = next(k for k in sd if "fc1.weight" in k)
        return {k: v.to(torch.int8) if k == key else v for k, v in sd.items()}

    folder = _variant(base, tmp_path / "int8", state=int8)
    message = _load_error(folder)
    assert "non-floating-point weights" in message and "fc1.weight (torch.int8)" in message


def test_cli_reports_a_bad_config_in_one_line(base, tmp_path, capsys):
    folder = _variant(base, tmp_path / "cfg_list", config="[]", pickle=True)
    wav = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(wav, np.zeros(24000, dtype=np.float32), 24000)
    assert main(["embed", str(wav), "--model", str(folder), "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert "must hold a JSON object" in err and "Traceback" not in err


def test_run_folder_or_ckpt_given_as_model_points_to_export(base, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: tiny\n")
    torch.save({"state_dict": load_file(base / "model.safetensors")}, run / "checkpoints" / "last.ckpt")
    with pytest.raises(FileNotFoundError, match=r"looks like a pretraining run.*`mert export "):
        Encoder.from_pretrained(run)
    with pytest.raises(FileNotFoundError, match=r"looks like a pretraining run.*`mert export "):
        Encoder.from_pretrained(run / "checkpoints" / "last.ckpt")


def test_export_of_a_ckpt_that_is_not_a_dict(tmp_path, capsys):
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    assert main(["export", str(tmp_path / "list.ckpt"), str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "is not a mert pretraining checkpoint (it holds a list, not a dict)" in err and "Traceback" not in err


def test_teacher_file_without_format_version(tmp_path):
    from mert.targets._common import load_teacher_file

    torch.save({"format": "mert.targets.kmeans"}, tmp_path / "km_bad.pt")
    with pytest.raises(ValueError, match=r"km_bad.pt' has no valid 'format_version'"):
        load_teacher_file(tmp_path / "km_bad.pt", "mert.targets.kmeans", 1, "k-means", "fit", "mert")


def test_poisoned_feature_cache_item_is_named(tmp_path):
    from mert.probe.cache import FeatureCache, FeatureSpec

    class Row:
        key = "clip-0"

    class Data:
        examples = [Row()]

    cache = FeatureCache(tmp_path / "fcache", Encoder("tiny"), FeatureSpec())
    item = cache.path(Row())
    item.parent.mkdir(parents=True)
    np.save(item, np.array([{"payload": 1}], dtype=object), allow_pickle=True)  # a pickle inside .npy
    with pytest.raises(ValueError, match=rf"feature cache file '{item}' cannot be read.*delete that file"):
        cache.load(Data())
    np.save(item, np.arange(4))  # readable, but not features
    with pytest.raises(ValueError, match="does not hold float features"):
        cache.load(Data())
    np.save(item, np.ones((2, 3), dtype=np.float32))
    feats, mask = cache.load(Data())
    assert mask.tolist() == [True] and feats[0].shape == (2, 3)


# --- Encoder arguments -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def enc() -> Encoder:
    return Encoder("tiny").eval()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(chunk_seconds=math.nan), "chunk_seconds must be a finite number"),
        (dict(chunk_seconds=math.inf), "chunk_seconds must be a finite number"),
        (dict(chunk_seconds=1.0, overlap_seconds=math.nan), "overlap_seconds must be a finite number"),
        (dict(layers=1.5), "layers must be an int, a list of ints"),
        (dict(layers=True), "layers must be an int, a list of ints"),
        (dict(layers=[0, 1.0]), "layers must be an int, a list of ints"),
    ],
)
def test_bad_encoder_arguments_are_named(enc, kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        enc(torch.randn(4800), sample_rate=24000, **kwargs)


def test_numpy_layer_indices_still_work(enc):
    out = enc(torch.randn(4800), sample_rate=24000, layers=[np.int64(1)])
    assert out.hidden_states[1] is not None


@pytest.mark.parametrize("config", [123, None, 1.5, {"hidden_size": 32}])
def test_encoder_config_of_the_wrong_type(config):
    with pytest.raises(TypeError, match="config must be an EncoderConfig or a preset name"):
        Encoder(config)


def test_encoder_config_from_dict_refuses_non_objects():
    with pytest.raises(ValueError, match="must be a JSON object"):
        EncoderConfig.from_dict([1, 2])


def test_teacher_file_with_missing_entries(tmp_path):
    from mert.targets import KMeansTargets

    torch.save({"format": KMeansTargets.FORMAT, "format_version": 1, "sample_rate": 24000}, tmp_path / "km.pt")
    with pytest.raises(ValueError, match=r"km.pt' is not a complete k-means teacher file \(entry '.*' is missing\)"):
        KMeansTargets.load(tmp_path / "km.pt")
