"""Probe label semantics: integer ids are classes, and manifests with nothing to learn or contradictory labels are
refused with the counts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mert.probe.tasks import ProbeDataset, TaskSpec, infer_task_type


def _manifest(folder: Path, rows: list[tuple[str, str]], name: str = "m.csv") -> Path:
    """A manifest over empty placeholder files (labels and splits are read without decoding audio)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,split"]
    splits = ["train", "train", "valid", "test"]
    for i, (clip, label) in enumerate(rows):
        (folder / clip).touch()
        lines.append(f"{clip},{label},{splits[i % 4]}")
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_integer_ids_are_classes_unless_regression_is_explicit(tmp_path):
    m = _manifest(tmp_path, [(f"c{i}.wav", str(i % 3)) for i in range(12)])
    auto = ProbeDataset.from_manifest(m, TaskSpec(type="auto"))
    assert auto.task.type == "multiclass" and auto.classes == ["0", "1", "2"]
    assert auto.targets.tolist() == [i % 3 for i in range(12)]
    explicit = ProbeDataset.from_manifest(m, TaskSpec(type="regression"))
    assert explicit.task.type == "regression" and explicit.targets[:3, 0].tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["0", "1", "2"], "multiclass"),
        (["-1", "+3", "11"], "multiclass"),
        (["1;3", "2"], "multilabel"),
        (["0.5", "1"], "regression"),
        (["1e-3", "2"], "regression"),
        (["0.1;0.2", "0.3;0.4"], "regression"),
        (["rock", "jazz"], "multiclass"),
    ],
)
def test_auto_type_inference(labels, expected):
    assert infer_task_type(labels) == expected


def test_many_distinct_integers_warn_that_they_are_read_as_classes(caplog):
    with caplog.at_level(logging.WARNING, logger="mert.probe.tasks"):
        assert infer_task_type([str(60 + i) for i in range(40)]) == "multiclass"
    assert "40 distinct whole numbers, read as class ids" in caplog.text


def test_single_class_is_refused_with_the_count(tmp_path):
    m = _manifest(tmp_path, [(f"c{i}.wav", "only") for i in range(8)], "one_class.csv")
    with pytest.raises(ValueError, match=r"one_class.csv: every one of the 8 examples has the label 'only'"):
        ProbeDataset.from_manifest(m, TaskSpec())


def test_constant_regression_target_and_identical_tags_are_refused(tmp_path):
    m = _manifest(tmp_path / "r", [(f"c{i}.wav", "0.5") for i in range(8)])
    with pytest.raises(ValueError, match=r"all 8 regression targets equal \[0.5\]"):
        ProbeDataset.from_manifest(m, TaskSpec())
    m = _manifest(tmp_path / "t", [(f"c{i}.wav", "a;b") for i in range(8)])
    with pytest.raises(ValueError, match=r"all 8 examples carry the same tags \['a', 'b'\]"):
        ProbeDataset.from_manifest(m, TaskSpec())


def test_same_clip_with_conflicting_labels_is_refused(tmp_path):
    rows = [(f"c{i}.wav", f"class{i % 2}") for i in range(8)]
    rows += [(f"c{i}.wav", "class1") for i in range(0, 8, 2)]  # every class0 clip again as class1
    m = _manifest(tmp_path, rows, "dup_conflict.csv")
    with pytest.raises(
        ValueError, match=r"dup_conflict.csv: 4 clip\(s\) are listed more than once with different"
    ) as e:
        ProbeDataset.from_manifest(m, TaskSpec())
    assert "'class0' in row 2 and 'class1' in row 10" in str(e.value)


def test_same_clip_with_the_same_label_or_other_segments_is_accepted(tmp_path):
    folder = tmp_path / "seg"
    folder.mkdir()
    (folder / "a.wav").touch()
    (folder / "b.wav").touch()
    text = "path,label,split,start,end\n"
    text += "a.wav,x,train,0,1\na.wav,y,train,1,2\nb.wav,y,valid,,\nb.wav,y,test,,\na.wav,x,test,2,3\n"
    (folder / "m.csv").write_text(text)
    ds = ProbeDataset.from_manifest(folder / "m.csv", TaskSpec())
    assert ds.classes == ["x", "y"] and len(ds.examples) == 5
