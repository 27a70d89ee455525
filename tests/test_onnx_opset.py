"""``--opset`` is honoured or refused: never a model of another opset reported as written."""

from __future__ import annotations

import pytest

from mert import Encoder
from mert.cli import main

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize("opset", ["15", "7", "0", "999"])
def test_unsupported_opset_is_refused_before_any_work(tmp_path, capsys, opset):
    Encoder("tiny").save_pretrained(tmp_path / "ck")
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "ck"), str(out), "--format", "onnx", "--opset", opset]) == 1
    err = capsys.readouterr().err
    assert f"opset {opset} cannot be written: this exporter writes ONNX opsets 18 to" in err
    assert not (out / "model.onnx").exists()


def test_python_api_refuses_non_integer_opsets(tmp_path):
    from mert.models.onnx_export import export_onnx

    for opset in (17, True, 18.0):
        with pytest.raises(ValueError, match="cannot be written"):
            export_onnx(Encoder("tiny"), tmp_path / "m.onnx", opset=opset)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_a_newer_opset_is_written_as_asked(tmp_path):
    from mert.models.onnx_export import export_onnx

    path = export_onnx(Encoder("tiny"), tmp_path / "m.onnx", opset=20, check=False)
    versions = {o.domain: o.version for o in onnx.load(str(path)).opset_import}
    assert versions[""] == 20
