"""The README's `make demo` job: yaml-built objects train on random tensors."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_learns_above_chance(capsys):
    spec = importlib.util.spec_from_file_location("xmkd_demo", ROOT / "recipes/Demo/demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    accuracy = demo.main([str(ROOT / "recipes/Demo/hparams/demo.yaml"), "--steps=40", "--log_every=20"])
    out = capsys.readouterr().out
    assert "step   20" in out and "soft_feature:" in out and "task:" in out
    assert accuracy > 0.5  # chance is 5% over 20 classes
