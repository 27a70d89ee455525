"""The model card (``README.md``) and licence notice (``LICENSE``) that ``mert export`` writes beside the weights.

Why: weights continued from a released model carry that model's licence (MERT-v1 is CC-BY-NC-4.0), and a
folder of weights with no notice invites reuse the licence forbids. The licence is inherited from ``init_from``:
a registry entry's licence (:mod:`mert.registry`), or the ``licence`` an earlier export recorded in its
``meta.json``; an encoder trained from scratch has the licence its owner gives (``--licence``), else "unspecified".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["inherited_licence", "licence_notice", "model_card"]

UNSPECIFIED = "unspecified"

# Hub metadata wants SPDX-like ids in lower case; the notice keeps the publisher's spelling.
_HUB_IDS = {"CC-BY-NC-4.0": "cc-by-nc-4.0", "CC-BY-4.0": "cc-by-4.0", "MIT": "mit", "APACHE-2.0": "apache-2.0"}


def inherited_licence(init_from: str | None) -> tuple[str | None, str]:
    """The licence weights continued from ``init_from`` inherit, and where it was read.

    Returns:
        ``(licence, why)``: ``(None, ...)`` when nothing is inherited (trained from scratch), ``"unknown"`` when the
        base model's licence cannot be found here (the card then asks the user to check it).
    """
    if not init_from:
        return None, "trained from scratch (no init_from)"
    from mert.registry import lookup_checkpoint

    entry = lookup_checkpoint(str(init_from))
    if entry is not None and entry.licence not in (None, "", "unknown"):
        return entry.licence, f"inherited from {init_from} (the {entry.name} registry entry)"
    folder = Path(str(init_from)).expanduser()
    meta = folder / "meta.json"
    if meta.is_file():
        try:
            licence = json.loads(meta.read_text(encoding="utf-8")).get("licence")
        except (OSError, ValueError, AttributeError):
            licence = None
        if licence and licence != UNSPECIFIED:
            return str(licence), f"inherited from {init_from} (its meta.json)"
    return "unknown", f"continued from {init_from}, whose licence is not known here: check it before sharing"


def licence_notice(licence: str, why: str, base: str | None) -> str:
    """The ``LICENSE`` file: which licence applies and why (a notice, not the licence's full text)."""
    lines = [f"Licence of these weights: {licence}", "", why.capitalize() + "."]
    if base and licence not in ("unknown", UNSPECIFIED):
        lines += [
            "",
            f"These weights were trained starting from {base}; they are a derivative of it and are distributed",
            f"under its licence, {licence}. The licence text is published by its author"
            + (" (https://creativecommons.org/licenses/by-nc/4.0/)." if licence.upper() == "CC-BY-NC-4.0" else "."),
        ]
        if licence.upper().startswith("CC-BY-NC"):
            lines += ["", "Non-commercial use only; credit the base model's authors."]
    elif licence == "unknown":
        lines += ["", "Do not redistribute these weights until the base model's licence is known."]
    elif licence == UNSPECIFIED:
        lines += ["", "The owner of the training run has not chosen a licence (`mert export --licence ID`)."]
    lines += ["", "The `mert` library that wrote them is separate software with its own licence."]
    return "\n".join(lines) + "\n"


def _data_summary(data: Any) -> str:
    if not isinstance(data, dict):
        return "not recorded in the checkpoint"
    ds = data.get("dataset") or {}
    kind = str(ds.get("_target_", "")).rsplit(".", 1)[-1] or "unknown"
    if data.get("manifest"):
        return f"audio files of the manifest `{data['manifest']}` ({kind}, random crops)"
    if data.get("shards"):
        return f"WebDataset shards in `{data['shards']}` ({kind})"
    if kind == "SyntheticDataset":
        return f"synthetic music rendered on the fly ({ds.get('num_clips', '?')} clips of {ds.get('seconds', '?')} s)"
    return kind


def _teachers(teachers: Any) -> list[str]:
    if not isinstance(teachers, dict) or not teachers:
        return ["not recorded"]
    out = []
    for name, t in teachers.items():
        if isinstance(t, dict):
            desc = ", ".join(f"{k} {v}" for k, v in t.items() if isinstance(v, str | int | float) and k != "weights")
            out.append(f"{name}: {desc}" if desc else name)
        else:
            out.append(f"{name}: {t}")
    return out


def model_card(
    meta: dict[str, Any],
    *,
    name: str,
    licence: str,
    licence_why: str,
    base: str | None,
    probe_markdown: str | None = None,
    format: str = "mert",
) -> str:
    """The ``README.md`` of an export: front matter for the Hugging Face Hub, then what the weights are, how they
    were trained (data, teachers, steps, audio-hours), their licence, intended use, probe results, how to load."""
    training = meta.get("training") or {}
    hours = training.get("audio_hours_seen", training.get("audio_hours"))
    hub_licence = _HUB_IDS.get(licence.upper(), "other")
    front = ["---", f"license: {hub_licence}"]
    if hub_licence == "other":
        front.append(f"license_name: {licence}")
    front += ["library_name: mert", "tags:", "  - audio", "  - music", "  - self-supervised-learning"]
    if base:
        front.append(f"base_model: {base}")
    front.append("---")
    steps = training.get("global_step")
    lines = [
        *front,
        "",
        f"# {name}",
        "",
        "A MERT-style music audio encoder (self-supervised: masked prediction of teacher codes and features), "
        f"exported by `mert export` (mert {meta.get('mert_version', '?')}).",
        "",
        "## Training",
        "",
        f"- Base model: {base or 'none (trained from scratch)'}",
        f"- Training data: {_data_summary(meta.get('data'))}",
        f"- Teachers: {'; '.join(_teachers(meta.get('teachers')))}",
        f"- Steps: {steps if steps is not None else 'unknown'}; audio seen: "
        + (f"{float(hours):g} hours" if hours is not None else "unknown"),
    ]
    if meta.get("experiment"):
        lines.append(f"- Experiment: {meta['experiment']}")
    if training.get("final_loss") is not None:
        lines.append(f"- Final training loss: {training['final_loss']:.4g}")
    if meta.get("converted_from"):
        lines.append(f"- Converted from the release folder `{meta['converted_from']}`")
    lines += [
        "",
        "## Licence",
        "",
        f"{licence}: {licence_why}. See `LICENSE`.",
        "",
        "## Intended use",
        "",
        "Frozen features for music information retrieval research: probing (genre, key, tagging, beat), "
        "retrieval, and as a starting point for further pretraining. Not evaluated for speech, for safety-critical "
        "decisions, or for identifying people. Probe scores depend on the protocol and on the test size.",
    ]
    if probe_markdown:
        lines += ["", "## Probe results", "", "Test scores in % (mean +- std over seeds [bootstrap interval]).", ""]
        lines.append(probe_markdown.rstrip())
    load = (
        "from transformers import AutoModel\nmodel = AutoModel.from_pretrained(PATH)"
        if format == "hf"
        else "import onnxruntime\nsession = onnxruntime.InferenceSession(PATH + '/model.onnx')"
        if format == "onnx"
        else "from mert import Encoder\nencoder = Encoder.from_pretrained(PATH)"
    )
    lines += ["", "## Loading", "", "```python", load, "```", ""]
    return "\n".join(lines)
