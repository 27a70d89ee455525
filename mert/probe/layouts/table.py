"""The registry of layouts: each layout's function, its tasks and the options ``mert probe manifest`` passes it.

Shape legend: none (no tensors here).
"""

from __future__ import annotations

from collections.abc import Callable

from mert.probe.layouts._emo import emo
from mert.probe.layouts._folders import folders
from mert.probe.layouts._giantsteps import giantsteps
from mert.probe.layouts._gtzan import gtzan
from mert.probe.layouts._gtzan_beat import gtzan_beat
from mert.probe.layouts._mtt import mtt
from mert.probe.layouts._nsynth import nsynth
from mert.probe.layouts._vocalset import vocalset
from mert.probe.layouts.common import LayoutResult

__all__ = ["LAYOUTS"]

# layout -> (function, {short task name: probe task name}, CLI options it accepts)
LAYOUTS: dict[str, tuple[Callable[..., LayoutResult], dict[str, str], tuple[str, ...]]] = {
    "folders": (folders, {"multiclass": "multiclass"}, ("seed",)),
    "gtzan": (gtzan, {"genre": "gtzan_genre"}, ("seed",)),
    "gtzan-beat": (gtzan_beat, {"beat": "gtzan_beat"}, ("seed",)),
    "nsynth": (nsynth, {"instrument": "nsynth_instrument", "pitch": "nsynth_pitch"}, ("seed", "max_per_class")),
    "giantsteps": (giantsteps, {"key": "giantsteps_key"}, ("seed", "split")),
    "mtt": (mtt, {"tagging": "mtt_tagging"}, ("split_dir",)),
    "emo": (emo, {"regression": "emo_regression"}, ("seed",)),
    "vocalset": (
        vocalset,
        {"technique": "vocalset_technique", "singer": "vocalset_singer"},
        ("seed", "techniques"),
    ),
}
