"""ONNX export: onnxruntime gives the encoder's hidden states for any batch and length (slow tier: the
dynamo exporter takes about a minute per model on 2 cores)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mert import EncoderConfig
from mert.cli import main
from tests.helpers import perturbed_encoder

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "config",
    [
        EncoderConfig.preset("tiny"),  # 95M layout: GroupNorm front end, post-LN
        EncoderConfig.preset("tiny", frontend_norm="layer", pre_ln=True, normalize_input=True),  # 330M layout
    ],
    ids=["95m_layout", "330m_layout"],
)
def test_onnx_export_matches_the_encoder_for_any_batch_and_length(tmp_path, config):
    enc = perturbed_encoder(config)
    enc.save_pretrained(tmp_path / "release")
    layers = "0,2" if not config.pre_ln else "all"  # 0,2: an early exit; all: the 330M's final LayerNorm too
    assert (
        main(["export", str(tmp_path / "release"), str(tmp_path / "onnx"), "--format", "onnx", "--layers", layers]) == 0
    )
    path = tmp_path / "onnx" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    idx = [0, 2] if not config.pre_ln else list(range(config.num_hidden_states))
    assert [o.name for o in session.get_outputs()] == [f"hidden_state_{i}" for i in idx] + ["frames"]
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert json.loads(props["layers"]) == idx and int(props["sample_rate"]) == enc.sample_rate
    assert EncoderConfig.from_dict(json.loads(props["mert_config"])) == enc.config
    rng = np.random.default_rng(0)
    # batch 1 and 3; lengths shorter than, and several times, the front end's 256-frame tile (82 k samples)
    for lengths in ([24000], [200000, 150000, 90001], [401]):
        n = max(lengths)
        wav = (0.1 * rng.standard_normal((len(lengths), n))).astype(np.float32)
        for i, m in enumerate(lengths):
            wav[i, m:] = 0.5  # junk in the padding: the graph must ignore it
        got = session.run(None, {"wav": wav, "lengths": np.array(lengths, dtype=np.int64)})
        with torch.inference_mode():
            ref = enc(torch.from_numpy(wav), torch.tensor(lengths), sample_rate=enc.sample_rate)
        for name, a, i in zip([f"h{i}" for i in idx], got, idx):
            b = ref.hidden_states[i].numpy()
            assert a.shape == b.shape, (name, a.shape, b.shape)
            assert np.abs(a - b).max() <= 1e-4, (name, lengths, float(np.abs(a - b).max()))
        assert got[-1].tolist() == ref.lengths.tolist()
