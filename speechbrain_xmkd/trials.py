"""Trial lists: VoxCeleb1-O/E/H (and any list in their format) and CN-Celeb.

Both become a :class:`TrialSet`: trials ``(label, enrol_id, test_utterance)``,
the utterances of each enrolment model, and the audio root the utterance
paths are relative to. In VoxCeleb lists an enrolment model is one
utterance (its id is its path); in CN-Celeb it is one or more utterances
(``eval/lists/enroll.lst``).

Authors
 * speechbrain_xmkd contributors
"""

import logging
import os
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

__all__ = ["TrialSet", "read_voxceleb_trials", "read_cnceleb_trials", "load_trial_set"]


@dataclass
class TrialSet:
    """One trial list, ready to embed and score.

    Arguments
    ---------
    name : str
        Key in ``results.json`` and in file names (``vox1_o``, ``cnceleb``...).
    trials : list of (int, str, str)
        ``(label, enrol_id, test_utterance)``; label 1 = same speaker.
    enrol : dict
        ``enrol_id -> tuple of utterances`` (paths relative to ``audio_root``).
    audio_root : str
        Folder the utterance paths are relative to.
    skipped : int
        Trials left out because a file was missing (``skip_missing``).
    source : str
        The list file(s), for messages.

    Example
    -------
    >>> s = TrialSet("t", [(1, "a.wav", "b.wav"), (0, "a.wav", "c.wav")], {"a.wav": ("a.wav",)}, "/x")
    >>> s.test_utterances, s.utterances
    (['b.wav', 'c.wav'], ['a.wav', 'b.wav', 'c.wav'])
    """

    name: str
    trials: list
    enrol: dict
    audio_root: str
    skipped: int = 0
    source: str = ""
    test_utterances: list = field(init=False)
    utterances: list = field(init=False)

    def __post_init__(self):
        self.test_utterances = sorted({t[2] for t in self.trials})
        enrol_utts = {u for utts in self.enrol.values() for u in utts}
        self.utterances = sorted(enrol_utts | set(self.test_utterances))

    def path(self, utterance):
        """Absolute path of an utterance."""
        return os.path.join(self.audio_root, utterance)


class _FileCheck:
    """Remembers which utterance files exist (a file named by many trials is checked once)."""

    def __init__(self, audio_root):
        self.audio_root = audio_root
        self.known = {}

    def __call__(self, utterance):
        if utterance not in self.known:
            self.known[utterance] = os.path.isfile(os.path.join(self.audio_root, utterance))
        return self.known[utterance]


def _missing_error(list_file, number, path):
    return FileNotFoundError(
        f"{list_file}, line {number}: audio file '{path}' does not exist "
        "(pass --skip_missing to leave such trials out and count them)"
    )


def read_voxceleb_trials(list_file, audio_root, name=None, skip_missing=False, check_files=True):
    """Reads a list in VoxCeleb1's format: ``label enrol test`` per line.

    ``veri_test2.txt`` (VoxCeleb1-O, cleaned), ``list_test_all2.txt`` (E),
    ``list_test_hard2.txt`` (H) and the embedded corpus's
    ``veri_test_synthetic.txt`` all have this format.

    Arguments
    ---------
    list_file : str
        The trial list.
    audio_root : str
        Folder the paths are relative to (VoxCeleb1's ``wav/``).
    name : str, optional
        Set name (default: the list's file name without extension).
    skip_missing : bool
        Leave out (and count) trials naming a missing file instead of
        raising.
    check_files : bool
        Check that the files exist at all.

    Returns
    -------
    TrialSet

    Raises
    ------
    FileNotFoundError
        Missing list, or a missing audio file (with the list's name and line).
    ValueError
        A malformed line (with the list's name and line).

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> _ = open(os.path.join(root, "a.wav"), "w"), open(os.path.join(root, "b.wav"), "w")
    >>> path = os.path.join(root, "list.txt")
    >>> _ = open(path, "w").write("1 a.wav b.wav\\n0 a.wav gone.wav\\n")
    >>> read_voxceleb_trials(path, root)
    Traceback (most recent call last):
    ...
    FileNotFoundError: ...list.txt, line 2: audio file '...gone.wav' does not exist (pass --skip_missing ...)
    >>> s = read_voxceleb_trials(path, root, skip_missing=True)
    >>> s.trials, s.skipped
    ([(1, 'a.wav', 'b.wav')], 1)
    """
    list_file = os.fspath(list_file)
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"trial list '{list_file}' does not exist")
    exists = _FileCheck(audio_root)
    trials, skipped = [], 0
    with open(list_file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3 or fields[0] not in ("0", "1"):
                raise ValueError(
                    f"{list_file}, line {number}: expected 'label enrol test' with label 0 or 1, "
                    f"got {line.strip()!r}"
                )
            if check_files:
                missing = [u for u in fields[1:] if not exists(u)]
                if missing:
                    if not skip_missing:
                        raise _missing_error(list_file, number, os.path.join(audio_root, missing[0]))
                    skipped += 1
                    continue
            trials.append((int(fields[0]), fields[1], fields[2]))
    if not trials:
        raise ValueError(f"{list_file}: no trials" + (f" ({skipped} skipped for missing files)" if skipped else ""))
    if skipped:
        logger.warning("%s: skipped %d trial(s) naming a missing file", list_file, skipped)
    enrol = {t[1]: (t[1],) for t in trials}
    name = name or os.path.splitext(os.path.basename(list_file))[0]
    return TrialSet(name, trials, enrol, os.fspath(audio_root), skipped, list_file)


def read_cnceleb_trials(folder, name="cnceleb", skip_missing=False, check_files=True):
    """Reads CN-Celeb's evaluation protocol (enrolment models + trials).

    Files (paths inside them are relative to ``<folder>/eval``)::

        eval/lists/enroll.lst   enroll_id path          (one line per enrolment utterance)
        eval/lists/trials.lst   enroll_id test_path label

    An enrolment model with several utterances is scored with the mean of
    their mean unit crop vectors.

    Arguments
    ---------
    folder : str
        CN-Celeb root (holding ``eval/``), or its ``eval`` folder itself.
    name : str
        Set name.
    skip_missing : bool
        Leave out (and count) trials whose test file, or one of whose
        enrolment files, is missing.
    check_files : bool
        Check that the audio files exist at all.

    Returns
    -------
    TrialSet

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp(); os.makedirs(os.path.join(root, "eval", "lists"))
    >>> _ = open(os.path.join(root, "eval/lists/enroll.lst"), "w").write("id1-enroll enroll/id1-enroll.flac\\n")
    >>> _ = open(os.path.join(root, "eval/lists/trials.lst"), "w").write("id1-enroll test/id1-a.flac 1\\n")
    >>> s = read_cnceleb_trials(root, check_files=False)
    >>> s.trials, s.enrol
    ([(1, 'id1-enroll', 'test/id1-a.flac')], {'id1-enroll': ('enroll/id1-enroll.flac',)})
    """
    if folder is None:
        raise ValueError("CN-Celeb folder is not set: pass --cnceleb_folder=/path/to/CN-Celeb")
    folder = os.fspath(folder)
    eval_dir = folder if os.path.isdir(os.path.join(folder, "lists")) else os.path.join(folder, "eval")
    enroll_file = os.path.join(eval_dir, "lists", "enroll.lst")
    trials_file = os.path.join(eval_dir, "lists", "trials.lst")
    for path in (enroll_file, trials_file):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"CN-Celeb list '{path}' does not exist; expected <CN-Celeb>/eval/lists/enroll.lst "
                "('enroll_id path' lines) and trials.lst ('enroll_id test_path label' lines)"
            )
    exists = _FileCheck(eval_dir)
    enrol, missing_models = {}, {}
    with open(enroll_file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(f"{enroll_file}, line {number}: expected 'enroll_id path', got {line.strip()!r}")
            model, utterance = fields
            if check_files and not exists(utterance):
                if not skip_missing:
                    raise _missing_error(enroll_file, number, os.path.join(eval_dir, utterance))
                missing_models[model] = number
                continue
            enrol.setdefault(model, []).append(utterance)
    trials, skipped = [], 0
    with open(trials_file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3 or fields[2] not in ("0", "1"):
                raise ValueError(
                    f"{trials_file}, line {number}: expected 'enroll_id test_path label' with label 0 or 1, "
                    f"got {line.strip()!r}"
                )
            model, test, label = fields
            if model in missing_models:
                skipped += 1
                continue
            if model not in enrol:
                raise ValueError(f"{trials_file}, line {number}: enrolment model '{model}' is not in {enroll_file}")
            if check_files and not exists(test):
                if not skip_missing:
                    raise _missing_error(trials_file, number, os.path.join(eval_dir, test))
                skipped += 1
                continue
            trials.append((int(label), model, test))
    if not trials:
        raise ValueError(f"{trials_file}: no trials" + (f" ({skipped} skipped for missing files)" if skipped else ""))
    if skipped:
        logger.warning("%s: skipped %d trial(s) naming a missing file", trials_file, skipped)
    used = {t[1] for t in trials}
    enrol = {m: tuple(u) for m, u in enrol.items() if m in used}
    return TrialSet(name, trials, enrol, eval_dir, skipped, trials_file)


def load_trial_set(name, spec, skip_missing=False):
    """Builds a :class:`TrialSet` from one entry of the yaml's ``trial_sets``.

    Arguments
    ---------
    name : str
        The entry's key.
    spec : dict
        ``{format: voxceleb, list: <file>, audio_root: <folder>}`` or
        ``{format: cnceleb, folder: <CN-Celeb root>}``.
    skip_missing : bool
        See :func:`read_voxceleb_trials`.

    Returns
    -------
    TrialSet
    """
    kind = spec.get("format", "voxceleb")
    if kind == "voxceleb":
        for key in ("list", "audio_root"):
            if spec.get(key) is None:
                raise ValueError(f"trial set '{name}': '{key}' is not set")
        return read_voxceleb_trials(spec["list"], spec["audio_root"], name, skip_missing)
    if kind == "cnceleb":
        return read_cnceleb_trials(spec.get("folder"), name, skip_missing)
    raise ValueError(f"trial set '{name}': unknown format {kind!r} (expected 'voxceleb' or 'cnceleb')")
