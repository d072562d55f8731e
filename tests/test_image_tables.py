"""Every row of the paper's image tables builds from the yamls it runs on; the runner shares runs."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml
from hyperpyyaml import load_hyperpyyaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "CIFAR100"
sys.path.append(str(RECIPE))  # the yamls name recipe-local functions

_spec = importlib.util.spec_from_file_location("cifar100_run_table", RECIPE / "run_table.py")
run_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_table)

TABLES = yaml.safe_load((RECIPE / "tables.yaml").read_text())
ROWS = [(table, hp, row) for table, spec in TABLES.items() for hp in spec["hparams"] for row in spec["rows"]]
LOSS_OF_METHOD = {
    "baseline": None, "kd": "kd", "fitnet": "fitnet", "pkt": "pkt", "sp": "sp", "ickd": "ickd", "ccl": "ccl",
    "clip": "clip", "feature": "soft_feature", "classifier": "shared_classifier",
}
# A compact student keeps building ~60 rows cheap; the objective does not depend on it.
CHEAP = {"data_folder": "/nonexistent/data", "student": "compact", "emb_dim": 32}


def _load(yaml_file, overrides):
    with open(yaml_file, encoding="utf-8") as handle:
        return load_hyperpyyaml(handle, overrides)


@pytest.mark.parametrize("table, hparams_file, row", ROWS, ids=[f"{t}-{Path(h).stem}-{run_table.slug(r['name'])}" for t, h, r in ROWS])
def test_row_builds_the_right_objective(table, hparams_file, row):
    overrides = row["overrides"]
    hparams = _load(RECIPE / "hparams" / hparams_file, {**CHEAP, **overrides})
    distiller = hparams["distiller"]
    loss = distiller.loss
    assert (loss.registry_name if loss is not None else None) == LOSS_OF_METHOD[overrides["method"]]
    head = type(distiller.projection).__name__
    assert head == ("ProjectionHead" if overrides["projection"] == "head" else "FixedProjection")
    assert (distiller.weighter is not None) == (overrides["quality"] != "none")
    for key, owner in (("alpha", distiller.projection), ("margin", loss), ("beta", loss)):
        if key in overrides:
            assert getattr(owner, key) == pytest.approx(overrides[key])
    assert hparams["data_fraction"] == overrides.get("data_fraction", 1.0)
    # The task head the distiller scores is the one that is checkpointed.
    assert distiller.classifier is hparams["checkpointer"].recoverables["classifier"]


@pytest.mark.parametrize("hparams_file, margin, student, classes", [
    ("cifar100_resnet18_xmkd.yaml", 0.3**2, "resnet18", 100),
    ("cifar100_resnet34_xmkd.yaml", 0.2**2, "resnet34", 100),
    ("tinyimagenet_resnet34_xmkd.yaml", 0.2**2, "resnet34", 200),
])
def test_paper_defaults(hparams_file, margin, student, classes):
    hparams = _load(RECIPE / "hparams" / hparams_file, {"data_folder": "/nonexistent", "student": "compact", "emb_dim": 32})
    assert run_table.yaml_value(RECIPE / "hparams" / hparams_file, "student") == student
    assert hparams["distiller"].loss.distance == "squared_l2" and hparams["margin"] == pytest.approx(margin)
    assert hparams["num_classes"] == classes and hparams["number_of_epochs"] == 90 and hparams["batch_size"] == 32
    assert (hparams["lr"], hparams["lr_decay_every"], hparams["weight_decay"]) == (0.1, 30, 0.0001)
    assert hparams["lr_annealing"](30) == (0.1, pytest.approx(0.01))
    assert hparams["alpha"] == 0.6 and hparams["beta"] == 1.0 and len(hparams["templates"]) == 80
    assert "RandomResizedCrop" in repr(hparams["train_transform"]) and "CenterCrop" in repr(hparams["test_transform"])


def test_every_method_in_the_synthetic_yaml():
    for method, name in LOSS_OF_METHOD.items():
        hparams = _load(RECIPE / "hparams" / "synthetic_image_xmkd.yaml", {"method": method})
        loss = hparams["distiller"].loss
        assert (loss.registry_name if loss is not None else None) == name


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(KeyError, match="unknown method 'fitnt'; valid: baseline, ccl, classifier, clip, feature"):
        _load(RECIPE / "hparams" / "synthetic_image_xmkd.yaml", {"method": "fitnt"})


def test_repeated_runs_share_one_folder(tmp_path):
    r34 = RECIPE / "hparams" / "cifar100_resnet34_xmkd.yaml"
    folders = {t: [run_table.run_folder(tmp_path, r34, r["overrides"]) for r in TABLES[t]["rows"]] for t in TABLES}
    assert set(folders["table8"]) <= set(folders["table7"])
    assert folders["table10"][3] == folders["table7"][7]  # alpha 0.6 = "Ours (feature)"
    assert folders["table11"][1] == folders["table7"][9]  # beta 1 = "Ours (classifier)"
    assert folders["table12"][2] == folders["table7"][7]  # 0.2^2 is ResNet34's margin
    r18 = RECIPE / "hparams" / "cifar100_resnet18_xmkd.yaml"
    assert run_table.run_folder(tmp_path, r18, TABLES["table12"]["rows"][3]["overrides"]) == \
        run_table.run_folder(tmp_path, r18, TABLES["table7"]["rows"][7]["overrides"])
    assert len(set(folders["table12"])) == 5 and folders["table7"][0].parent.name == "cifar100_resnet34_xmkd"


def test_runner_report_from_results(tmp_path, capsys):
    r18 = RECIPE / "hparams" / "cifar100_resnet18_xmkd.yaml"
    row = TABLES["table7"]["rows"][9]
    folder = run_table.run_folder(tmp_path, r18, row["overrides"])
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(
        {"top1": 0.7744, "top5": 0.93, "matching": {"accuracy": 0.785, "chance": 0.01}}))
    assert run_table.main(["table7", str(r18), f"--output_root={tmp_path}", "--rows=10"]) == 0
    report = (tmp_path / "table7.md").read_text()
    assert "| Ours (classifier) | 77.44% | 93.00% | 78.50% |" in report
    assert "| chance (matching) | | | 1.00% |" in report
