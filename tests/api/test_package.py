"""``import r2m``: __version__, lazy exports, fast and torch-free."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import r2m

ROOT = Path(__file__).resolve().parents[2]


def test_version_and_exports() -> None:
    assert r2m.__version__ == "0.1.0" or r2m.__version__[0].isdigit()
    from r2m.api.trainers import RLTrainer
    from r2m.models.r2m import FeedbackRewardModel

    assert r2m.RLTrainer is RLTrainer and r2m.FeedbackRewardModel is FeedbackRewardModel
    # one class per name: the trainers' arguments are *Arguments, the config file's sections r2m.config.*Config
    assert {"RLTrainer", "RMTrainer", "SERTrainer", "RLArguments", "RMArguments", "SERArguments",
            "TrainerCallback"} <= set(dir(r2m))
    assert not {"RLConfig", "RMConfig", "SERConfig"} & set(dir(r2m))
    try:
        r2m.NoSuchThing
    except AttributeError as e:
        assert "NoSuchThing" in str(e)
    else:
        raise AssertionError("r2m.NoSuchThing did not raise")


def test_import_is_fast_and_torch_free() -> None:
    code = ("import sys, time; t = time.perf_counter(); import r2m; dt = time.perf_counter() - t; "
            "import json; print(json.dumps({'s': dt, 'torch': 'torch' in sys.modules, 'v': r2m.__version__}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"import r2m: {got['s']:.3f} s")
    assert not got["torch"] and got["v"]
    assert got["s"] < 2.0  # the bound is 0.5 s; generous on a loaded 2-core CI machine
