"""Cross-modal (face-voice) matching, Table 4 of the paper.

A-F: one voice and two faces, one of them of the voice's identity; F-A:
one face and two voices. The system picks the option whose embedding has
the higher cosine with the anchor's: the student's speech embedding on
the voice side, the teacher's face embedding mapped into the student's
space (the distiller's projection head) on the face side. Original (O)
triples draw the wrong option's identity at random; hard (H) triples draw
it among the identities of the anchor's gender, so gender alone cannot
decide. Chance is 50%. Triples are drawn by a seeded generator, so every
system is scored on the same triples.

Authors
 * speechbrain_xmkd contributors
"""

import csv
import logging
import os

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["read_genders", "list_faces", "make_triples", "matching_accuracy", "run_matching", "StudentSpace"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
TASKS = (("AF", "voice", "face"), ("FA", "face", "voice"))


def read_genders(meta_file):
    """Identity -> gender from VoxCeleb1's ``vox1_meta.csv`` or the embedded corpus's ``meta.csv``.

    ``vox1_meta.csv`` is tab separated with the columns ``VoxCeleb1 ID``,
    ``VGGFace1 ID``, ``Gender``, ``Nationality``, ``Set``; ``meta.csv`` is
    comma separated with ``spk_id`` and ``gender`` (0/1) among others.

    Arguments
    ---------
    meta_file : str
        Either file.

    Returns
    -------
    dict
        ``identity -> gender`` (strings as written in the file).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "vox1_meta.csv")
    >>> _ = open(path, "w").write("VoxCeleb1 ID\\tVGGFace1 ID\\tGender\\tNationality\\tSet\\n"
    ...                           "id10001\\tA.J._Buckley\\tm\\tIreland\\tdev\\n")
    >>> read_genders(path)
    {'id10001': 'm'}
    """
    if meta_file is None or not os.path.isfile(meta_file):
        raise FileNotFoundError(f"identity meta file '{meta_file}' does not exist (vox1_meta.csv or meta.csv)")
    with open(meta_file, newline="", encoding="utf-8") as handle:
        header = handle.readline()
        delimiter = "\t" if "\t" in header else ","
        handle.seek(0)
        reader = csv.DictReader(handle, delimiter=delimiter)
        fields = {name.strip(): name for name in reader.fieldnames or ()}
        for id_column, gender_column in (("VoxCeleb1 ID", "Gender"), ("spk_id", "gender")):
            if id_column in fields and gender_column in fields:
                break
        else:
            raise ValueError(
                f"{meta_file}: expected columns 'VoxCeleb1 ID' and 'Gender' (vox1_meta.csv, tab separated) "
                f"or 'spk_id' and 'gender' (meta.csv), got {sorted(fields)}"
            )
        genders = {}
        for number, row in enumerate(reader, start=2):
            identity = (row[fields[id_column]] or "").strip()
            gender = (row[fields[gender_column]] or "").strip()
            if not identity or not gender:
                raise ValueError(f"{meta_file}, line {number}: empty identity or gender")
            genders[identity] = gender
    return genders


def list_faces(faces_folder, identities):
    """``identity -> sorted face images`` from ``<faces_folder>/<identity>/<video>.(png|jpg)``.

    Identities without a face folder are left out.

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp(); os.makedirs(os.path.join(root, "id1"))
    >>> _ = open(os.path.join(root, "id1", "v1.png"), "w")
    >>> {k: [os.path.basename(p) for p in v] for k, v in list_faces(root, ["id1", "id2"]).items()}
    {'id1': ['v1.png']}
    """
    if faces_folder is None or not os.path.isdir(faces_folder):
        raise FileNotFoundError(f"faces folder '{faces_folder}' does not exist (<folder>/<identity>/<video>.png)")
    faces = {}
    for identity in sorted(set(identities)):
        folder = os.path.join(faces_folder, identity)
        if os.path.isdir(folder):
            images = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
            if images:
                faces[identity] = images
    return faces


def make_triples(anchors, options, genders=None, n=10000, seed=0, hard=False):
    """Seeded ``(anchor, correct option, wrong option)`` triples.

    Each triple: an identity drawn uniformly among the eligible ones, an
    anchor item of it, an option item of it, and an option item of another
    identity (of the same gender when ``hard``).

    Arguments
    ---------
    anchors : dict
        ``identity -> list of anchor items`` (e.g. voices for A-F).
    options : dict
        ``identity -> list of option items`` (e.g. faces for A-F).
    genders : dict, optional
        ``identity -> gender``; needed when ``hard``.
    n : int
        Number of triples.
    seed : int
        Seed of the generator (same seed, same triples).
    hard : bool
        Wrong option of the anchor's gender.

    Returns
    -------
    list of (anchor, correct, wrong, identity, wrong_identity)

    Raises
    ------
    ValueError
        If fewer than two identities (hard: of one gender) have both anchors and options.

    Example
    -------
    >>> anchors = {"a": ["a1"], "b": ["b1"], "c": ["c1"]}
    >>> options = {"a": ["A"], "b": ["B"], "c": ["C"]}
    >>> t = make_triples(anchors, options, {"a": "m", "b": "m", "c": "f"}, n=4, seed=1, hard=True)
    >>> all(x[3] in "ab" and x[4] in "ab" and x[3] != x[4] for x in t), t == make_triples(
    ...     anchors, options, {"a": "m", "b": "m", "c": "f"}, n=4, seed=1, hard=True)
    (True, True)
    """
    usable = sorted(set(anchors) & set(options))
    usable = [i for i in usable if anchors[i] and options[i]]
    if hard:
        if genders is None:
            raise ValueError("hard triples need the identities' genders")
        unknown = [i for i in usable if i not in genders]
        if unknown:
            raise ValueError(f"no gender for identities {unknown[:5]} (of {len(unknown)}) in the meta file")
        peers = {i: [j for j in usable if j != i and genders[j] == genders[i]] for i in usable}
    else:
        peers = {i: [j for j in usable if j != i] for i in usable}
    eligible = [i for i in usable if peers[i]]
    if not eligible:
        kind = "of the same gender " if hard else ""
        raise ValueError(f"matching needs two identities {kind}with both voices and faces; found {len(usable)} usable")
    rng = np.random.default_rng([int(seed), int(bool(hard))])
    triples = []
    for _ in range(int(n)):
        identity = eligible[rng.integers(len(eligible))]
        other = peers[identity][rng.integers(len(peers[identity]))]
        anchor = anchors[identity][rng.integers(len(anchors[identity]))]
        correct = options[identity][rng.integers(len(options[identity]))]
        wrong = options[other][rng.integers(len(options[other]))]
        triples.append((anchor, correct, wrong, identity, other))
    return triples


def matching_accuracy(anchor, correct, wrong):
    """Share of triples where the correct option has the higher cosine (ties count half).

    Arguments
    ---------
    anchor, correct, wrong : torch.Tensor
        ``[n, D]`` embeddings (any norm).

    Example
    -------
    >>> a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    >>> matching_accuracy(a, torch.tensor([[1.0, 0.1], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    0.5
    """
    cos = torch.nn.functional.cosine_similarity
    right, other = cos(anchor, correct, dim=1), cos(anchor, wrong, dim=1)
    return float(((right > other).double() + 0.5 * (right == other).double()).mean())


def run_matching(voices, faces, voice_vectors, face_vectors, genders, n=10000, seed=0):
    """The four accuracies of Table 4: A-F and F-A, original and hard.

    Arguments
    ---------
    voices, faces : dict
        ``identity -> items`` (utterance keys, face paths).
    voice_vectors, face_vectors : dict
        ``item -> [D] tensor`` in one space (student space).
    genders : dict
        ``identity -> gender`` (for the hard sets; may be None: hard skipped).
    n, seed : triples per set and seed.

    Returns
    -------
    dict
        ``{"AF_O": {"accuracy_percent", "triples"}, ...}``; a set that cannot
        be built carries a ``note`` instead.
    """
    results = {}
    for task, anchor_kind, option_kind in TASKS:
        anchors, options = (voices, faces) if anchor_kind == "voice" else (faces, voices)
        anchor_vectors = voice_vectors if anchor_kind == "voice" else face_vectors
        option_vectors = face_vectors if option_kind == "face" else voice_vectors
        for hard in (False, True):
            name = f"{task}_{'H' if hard else 'O'}"
            if hard and genders is None:
                results[name] = {"note": "no gender meta file: hard set skipped"}
                continue
            try:
                triples = make_triples(anchors, options, genders, n, seed, hard)
            except ValueError as err:
                results[name] = {"note": str(err)}
                logger.warning("matching %s: %s", name, err)
                continue
            a = torch.stack([anchor_vectors[t[0]] for t in triples])
            c = torch.stack([option_vectors[t[1]] for t in triples])
            w = torch.stack([option_vectors[t[2]] for t in triples])
            results[name] = {"accuracy_percent": 100.0 * matching_accuracy(a, c, w), "triples": len(triples)}
    return results


class StudentSpace:
    """How a run compares a voice with a face: both mapped into one space.

    - a projection head (ours): faces become ``F_T = head(E_T)``, voices
      stay the student's embeddings;
    - no head but a loss with a ``regressor`` from student to teacher width
      (FitNet's hint regressor): voices become ``regressor(F_S)``, faces stay
      ``E_T``;
    - no head and equal widths: raw ``E_T`` against ``F_S``;
    - otherwise, or for the plain student (it never saw the teacher),
      matching is not defined: ``note`` says why.

    Arguments
    ---------
    distiller : speechbrain_xmkd.Distiller
        The run's distiller (in eval mode, loaded from the checkpoint).
    teacher_dim, student_dim : int
        Widths of ``E_T`` and of the student embeddings.

    Example
    -------
    >>> from speechbrain_xmkd import Distiller, ProjectionHead
    >>> head = ProjectionHead(teacher_dim=6, student_dim=4).eval()
    >>> d = Distiller("soft_feature", projection=head)
    >>> space = StudentSpace(d, 6, 4)
    >>> space.note, space.description, space.face(torch.randn(3, 6)).shape
    (None, 'projected teacher embedding (projection head)', torch.Size([3, 4]))
    >>> StudentSpace(Distiller(None, classifier=torch.nn.Linear(4, 2), task_loss=lambda l, y: l.sum()), 6, 4).note
    'plain student (no distillation): it never saw the teacher, matching is not defined'
    """

    def __init__(self, distiller, teacher_dim, student_dim):
        self.note, self.description = None, None
        self._face, self._voice = None, None
        if distiller is None or not distiller.distills:
            self.note = "plain student (no distillation): it never saw the teacher, matching is not defined"
            return
        regressor = getattr(distiller.loss, "regressor", None)
        if distiller.projection is not None:
            self._face, self.description = distiller.projection, "projected teacher embedding (projection head)"
        elif isinstance(regressor, torch.nn.Linear) and (regressor.in_features, regressor.out_features) == (
            student_dim, teacher_dim
        ):
            self._voice, self.description = regressor, "student through the loss's regressor vs raw teacher embedding"
        elif teacher_dim == student_dim:
            self.description = "raw teacher embedding (no projection head)"
        else:
            self.note = (
                f"no projection head and the widths differ (teacher {teacher_dim}, student {student_dim}): "
                "faces and voices are not in one space"
            )

    @torch.no_grad()
    def face(self, teacher_embeddings):
        """Face embeddings ``E_T [n, Dt]`` in the comparison space."""
        return teacher_embeddings if self._face is None else self._face(teacher_embeddings)

    @torch.no_grad()
    def voice(self, student_embeddings):
        """Student embeddings ``[n, Ds]`` in the comparison space."""
        return student_embeddings if self._voice is None else self._voice(student_embeddings)
