"""Probing data sets as users have them on disk -> labelled manifests for ``mert probe``.

    mert probe manifest gtzan /data/gtzan --out gtzan_genre.csv
    mert probe manifest nsynth /data/nsynth --task pitch --max-per-class 500 --out nsynth_pitch.csv

One function per layout scans the folder a public download unpacks to and returns a :class:`LayoutResult`: the
manifest rows plus what was left out and why (a missing audio file, a clip without a usable label, a file
outside the official split), so nothing disappears silently. Labels follow the manifest contract read by
``mert.probe.tasks``: a class name (multi-class), ``;``-joined tags (multi-label), ``;``-joined numbers
(regression) or ``;``-joined event times in seconds (beat tracking). Audio files are not opened here: the
feature cache decodes them and reports the unreadable ones (GTZAN's ``jazz.00054.wav`` stays listed on purpose).

Splits: the data set's own split wherever one exists (GTZAN fault-filtered lists, NSynth folders, MagnaTagATune
folders or Won et al. lists, VocalSet held-out singers as in MARBLE, the EMO MediaEval 2013 evaluation set);
otherwise :func:`mert.data.splits.seeded_split`, stratified by label for classification, 80/10/10
(train/valid/test).

Modules: ``common`` (the result type, root and file checks, the split by label), one per data set (``_gtzan``,
``_gtzan_beat``, ``_nsynth``, ``_giantsteps``, ``_mtt``, ``_emo``, ``_vocalset``, ``_folders``; underscored
because the package exports their layout functions under the same names), and ``table`` (``LAYOUTS``: each layout's
function and tasks). The ``mert probe manifest`` command is :mod:`mert.cli.probe`.
"""

from mert.probe.layouts._emo import EMO_EXPECTED, emo
from mert.probe.layouts._folders import FOLDERS_EXPECTED, folders
from mert.probe.layouts._giantsteps import GIANTSTEPS_EXPECTED, giantsteps, normalize_key
from mert.probe.layouts._gtzan import GTZAN_EXPECTED, GTZAN_GENRES, gtzan
from mert.probe.layouts._gtzan_beat import GTZAN_BEAT_EXPECTED, gtzan_beat
from mert.probe.layouts._mtt import MTT_EXPECTED, mtt
from mert.probe.layouts._nsynth import NSYNTH_EXPECTED, NSYNTH_FIELDS, nsynth
from mert.probe.layouts._vocalset import (
    MARBLE_VOCALSET_TECHNIQUES,
    VOCALSET_EXPECTED,
    VOCALSET_TEST_SINGERS,
    vocalset,
)
from mert.probe.layouts.common import SPLIT_FRACTIONS, SPLITS, VALID_FRACTION, LayoutResult
from mert.probe.layouts.table import LAYOUTS
from mert.probe.manifest import ManifestRow, read_manifest, write_manifest

__all__ = [
    "EMO_EXPECTED",
    "FOLDERS_EXPECTED",
    "GIANTSTEPS_EXPECTED",
    "GTZAN_BEAT_EXPECTED",
    "GTZAN_EXPECTED",
    "GTZAN_GENRES",
    "LAYOUTS",
    "MARBLE_VOCALSET_TECHNIQUES",
    "MTT_EXPECTED",
    "NSYNTH_EXPECTED",
    "NSYNTH_FIELDS",
    "SPLITS",
    "SPLIT_FRACTIONS",
    "VALID_FRACTION",
    "VOCALSET_EXPECTED",
    "VOCALSET_TEST_SINGERS",
    "LayoutResult",
    "ManifestRow",
    "emo",
    "folders",
    "giantsteps",
    "gtzan",
    "gtzan_beat",
    "mtt",
    "normalize_key",
    "nsynth",
    "read_manifest",
    "vocalset",
    "write_manifest",
]
