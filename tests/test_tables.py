"""Every row of the paper's speaker tables builds from the yaml it runs on."""

import sys
from pathlib import Path

import pytest
import yaml
from hyperpyyaml import load_hyperpyyaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "VoxCeleb"
sys.path.insert(0, str(RECIPE))

import run_table  # noqa: E402

TABLES = yaml.safe_load((RECIPE / "tables.yaml").read_text())
ROWS = [(table, row) for table, spec in TABLES.items() for row in spec["rows"]]
LOSS_OF_METHOD = {
    "baseline": None, "kd": "kd", "fitnet": "fitnet", "pkt": "pkt", "sp": "sp", "ickd": "ickd",
    "ccl": "ccl", "feature": "soft_feature", "classifier": "shared_classifier",
}
DUMMY = {"data_folder": "/nonexistent/vox2", "voxceleb1_folder": "/nonexistent/vox1",
         "teacher_weights": "/nonexistent/ir50.pth", "out_n_neurons": 7}
SUBST = {"weak_teacher_folder": "/nonexistent/weak", "weak_teacher_dim": 128}


def _load(yaml_file, overrides):
    with open(yaml_file, encoding="utf-8") as handle:
        return load_hyperpyyaml(handle, overrides)


@pytest.mark.parametrize("table, row", ROWS, ids=[f"{t}-{run_table.slug(r['name'])}" for t, r in ROWS])
def test_row_builds_the_right_objective(table, row):
    # As on the command line: the substituted text is parsed as yaml.
    overrides = {k: yaml.safe_load(str(v).format(**SUBST)) if isinstance(v, str) else v
                 for k, v in row["overrides"].items()}
    hparams = _load(RECIPE / "hparams" / "resnet34_xmkd.yaml", {**DUMMY, **overrides})
    distiller = hparams["distiller"]
    expected = LOSS_OF_METHOD[overrides["method"]]
    assert (distiller.loss.registry_name if distiller.loss is not None else None) == expected
    assert (distiller.projection is not None) == (overrides["projection"] == "head")
    assert (distiller.weighter is not None) == (overrides["quality"] != "none")
    for key in ("alpha", "margin"):
        if key in overrides:
            owner = distiller.projection if key == "alpha" else distiller.loss
            assert getattr(owner, key) == pytest.approx(overrides[key])
    if "teacher_kind" in overrides:
        assert overrides["teacher_kind"] in hparams["teachers"]
    # The classifier that the distiller scores is the one that is checkpointed.
    assert distiller.classifier is hparams["checkpointer"].recoverables["classifier"]


@pytest.mark.parametrize("method", sorted(LOSS_OF_METHOD))
def test_synthetic_yaml_has_every_method(method):
    hparams = _load(RECIPE / "hparams" / "synthetic_xmkd.yaml",
                    {"method": method, "projection": "raw" if method != "feature" else "head", "quality": "none"})
    loss = hparams["distiller"].loss
    assert (loss.registry_name if loss is not None else None) == LOSS_OF_METHOD[method]


def test_unknown_method_lists_valid_ones():
    with pytest.raises(KeyError, match="unknown method 'hinton'; valid: baseline, ccl, classifier"):
        _load(RECIPE / "hparams" / "resnet34_xmkd.yaml", {**DUMMY, "method": "hinton"})


@pytest.mark.parametrize("student", ["resnet34_half", "resnet34_full", "resnet_sb", "ecapa", "xvector"])
def test_students_and_task_losses(student):
    hparams = _load(RECIPE / "hparams" / "resnet34_xmkd.yaml",
                    {**DUMMY, "student": student, "task": "angleproto_softmax", "emb_dim": 64})
    assert hparams["embedding_model"] is hparams["modules"]["embedding_model"]
    assert getattr(hparams["compute_cost"], "takes_embeddings", False)


def test_run_table_dry_run_prints_one_command_per_row(capsys):
    assert run_table.main(["table5", str(RECIPE / "hparams" / "synthetic_xmkd.yaml"), "--dry-run",
                           "--output_root", "/tmp/x", "--", "--number_of_epochs=1"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if "train.py" in l]
    assert len(lines) == 5
    assert all("--method=feature" in l and "--number_of_epochs=1" in l for l in lines)
    assert "--alpha=0.2" in lines[0] and "--output_folder=/tmp/x/table5/alpha_0_2" in lines[0]
