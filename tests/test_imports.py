"""`import mert` stays light: no Lightning, Hydra, transformers or hub client at import time."""

import subprocess
import sys


def test_import_mert_is_light():
    code = (
        "import sys, mert; from mert import Encoder; "
        "heavy = [m for m in ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf', 'transformers', "
        "'huggingface_hub', 'torchaudio', 'soundfile') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported at `import mert`: {out.stdout.strip()}"
