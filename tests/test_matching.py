"""Face-voice matching (Table 4): seeded triples, the hard set's gender rule, accuracy, meta files."""

import math

import pytest
import torch

from speechbrain_xmkd import Distiller, ProjectionHead
from speechbrain_xmkd.matching import (
    StudentSpace,
    list_faces,
    make_triples,
    matching_accuracy,
    read_genders,
    run_matching,
)

GENDERS = {f"id{i}": "m" if i % 3 else "f" for i in range(9)}
VOICES = {spk: [f"{spk}/v{j}/0000{k}.wav" for j in range(2) for k in range(2)] for spk in GENDERS}
FACES = {spk: [f"faces/{spk}/v{j}.png" for j in range(2)] for spk in GENDERS}


def identity_of(item):
    return item.split("/")[1] if item.startswith("faces/") else item.split("/")[0]


@pytest.mark.parametrize("hard", [False, True])
def test_triples_reproducible_from_seed(hard):
    a = make_triples(VOICES, FACES, GENDERS, n=500, seed=11, hard=hard)
    assert a == make_triples(VOICES, FACES, GENDERS, n=500, seed=11, hard=hard)
    assert a != make_triples(VOICES, FACES, GENDERS, n=500, seed=12, hard=hard)
    assert len(a) == 500


@pytest.mark.parametrize("anchors,options", [(VOICES, FACES), (FACES, VOICES)])
def test_hard_triples_hold_one_gender_and_the_right_identities(anchors, options):
    hard = make_triples(anchors, options, GENDERS, n=2000, seed=0, hard=True)
    for anchor, correct, wrong, spk, other in hard:
        assert identity_of(anchor) == identity_of(correct) == spk
        assert identity_of(wrong) == other != spk
        assert GENDERS[spk] == GENDERS[other]
    original = make_triples(anchors, options, GENDERS, n=2000, seed=0, hard=False)
    mixed = sum(GENDERS[t[3]] != GENDERS[t[4]] for t in original)
    assert 0 < mixed < 2000  # original options ignore gender
    assert all(identity_of(t[2]) == t[4] != t[3] for t in original)


def test_hard_needs_two_identities_of_a_gender():
    genders = {"a": "m", "b": "f"}
    voices, faces = {"a": ["a/v/1.wav"], "b": ["b/v/1.wav"]}, {"a": ["fa"], "b": ["fb"]}
    with pytest.raises(ValueError, match="two identities of the same gender"):
        make_triples(voices, faces, genders, n=3, hard=True)
    assert len(make_triples(voices, faces, genders, n=3, hard=False)) == 3


def test_accuracy_equals_a_brute_force_count():
    generator = torch.Generator().manual_seed(0)
    a, c, w = (torch.randn(200, 5, generator=generator) for _ in range(3))
    c[:3] = w[:3]  # ties count half
    right = 0.0
    for x, y, z in zip(a.tolist(), c.tolist(), w.tolist()):
        cos = lambda u, v: sum(p * q for p, q in zip(u, v)) / math.sqrt(sum(p * p for p in u) * sum(q * q for q in v))  # noqa: E731
        s_right, s_wrong = cos(x, y), cos(x, z)
        right += 1.0 if s_right > s_wrong + 1e-9 else 0.5 if abs(s_right - s_wrong) <= 1e-9 else 0.0
    assert matching_accuracy(a, c, w) == pytest.approx(right / 200)


def test_run_matching_is_perfect_when_voices_equal_their_faces():
    vectors = {spk: torch.nn.functional.one_hot(torch.tensor(i), 9).float() for i, spk in enumerate(GENDERS)}
    voice_vectors = {u: vectors[spk] for spk, utts in VOICES.items() for u in utts}
    face_vectors = {f: vectors[spk] for spk, faces in FACES.items() for f in faces}
    results = run_matching(VOICES, FACES, voice_vectors, face_vectors, GENDERS, n=300, seed=1)
    assert sorted(results) == ["AF_H", "AF_O", "FA_H", "FA_O"]
    assert all(r["accuracy_percent"] == 100.0 and r["triples"] == 300 for r in results.values())
    assert "note" in run_matching(VOICES, FACES, voice_vectors, face_vectors, None, n=10)["AF_H"]


def test_read_genders_both_formats_and_errors(tmp_path):
    vox = tmp_path / "vox1_meta.csv"
    vox.write_text("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
                   "id10001\tA.J._Buckley\tm\tIreland\tdev\nid10270\tEric_McCormack\tm\tCanada\ttest\n"
                   "id10271\tSome_One\tf\tUSA\ttest\n")
    assert read_genders(vox) == {"id10001": "m", "id10270": "m", "id10271": "f"}
    synthetic = tmp_path / "meta.csv"
    synthetic.write_text("spk_id,split,gender,age\nid90101,test,0,0.5\nid90102,test,1,0.2\n")
    assert read_genders(synthetic) == {"id90101": "0", "id90102": "1"}
    bad = tmp_path / "bad.csv"
    bad.write_text("speaker,sex\na,m\n")
    with pytest.raises(ValueError, match=r"bad.csv: expected columns 'VoxCeleb1 ID' and 'Gender'"):
        read_genders(bad)
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        read_genders(tmp_path / "absent.csv")


def test_list_faces(tmp_path):
    (tmp_path / "id1").mkdir()
    for name in ("b.jpg", "a.png", "notes.txt"):
        (tmp_path / "id1" / name).write_bytes(b"")
    assert list_faces(tmp_path, ["id1", "id2"]) == {"id1": [str(tmp_path / "id1" / "a.png"), str(tmp_path / "id1" / "b.jpg")]}


def test_student_space_uses_the_projection_head():
    head = ProjectionHead(teacher_dim=6, student_dim=4).eval()
    space = StudentSpace(Distiller("soft_feature", projection=head), 6, 4)
    teacher = torch.randn(5, 6)
    with torch.no_grad():
        assert torch.equal(space.face(teacher), head(teacher))
    voices = torch.randn(3, 4)
    assert torch.equal(space.voice(voices), voices)
    raw = StudentSpace(Distiller("soft_feature"), 4, 4)
    assert raw.note is None and torch.equal(raw.face(voices), voices)
    assert "widths differ" in StudentSpace(Distiller("soft_feature"), 6, 4).note
    fitnet = Distiller("fitnet", loss_kwargs={"student_dim": 4, "teacher_dim": 6})
    space = StudentSpace(fitnet, 6, 4)
    with torch.no_grad():
        assert torch.equal(space.voice(voices), fitnet.loss.regressor(voices))
