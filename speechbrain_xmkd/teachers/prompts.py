"""Class prompts for text teachers: CLIP's templates and a seeded template sampler.

The image recipe turns each class name into text with one of CLIP's 80
ImageNet prompt templates (``"a bad photo of a {}."``), drawn at random per
training sample (Zhao et al., 2025, Sec. 4.2.1), and the frozen text
encoder embeds it. The templates are the ``OPENAI_IMAGENET_TEMPLATES`` of
open_clip (``zero_shot_metadata.py``), from Radford et al. (2021), written
here as format strings with one ``{}``.
"""

import hashlib
import string

import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

CLIP_IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# The 7-template subset of CLIP's prompt-engineering notebook (open_clip's
# SIMPLE_IMAGENET_TEMPLATES).
CLIP_SIMPLE_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

TEMPLATE_SETS = {"clip80": CLIP_IMAGENET_TEMPLATES, "clip7": CLIP_SIMPLE_TEMPLATES}


def get_templates(templates="clip80"):
    """Returns a checked list of prompt templates.

    Arguments
    ---------
    templates : str or list of str
        ``"clip80"`` (CLIP's 80 ImageNet templates, the paper's setting),
        ``"clip7"`` (CLIP's 7-template subset), or a list of format strings,
        each with exactly one ``{}`` where the class name goes.

    Returns
    -------
    list of str

    Example
    -------
    >>> len(get_templates("clip80")), get_templates("clip80")[0], get_templates("clip80")[-1]
    (80, 'a bad photo of a {}.', 'a tattoo of the {}.')
    >>> get_templates(["a {} on a table."])
    ['a {} on a table.']
    >>> get_templates(["a photo."])
    Traceback (most recent call last):
    ...
    ValueError: prompt template 0 'a photo.' has no '{}' for the class name
    """
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(
                f"unknown template set '{templates}'; valid: {', '.join(TEMPLATE_SETS)} "
                "or a list of format strings with one '{}'"
            )
        templates = TEMPLATE_SETS[templates]
    templates = list(templates)
    if not templates:
        raise ValueError("the list of prompt templates is empty")
    for index, template in enumerate(templates):
        if not isinstance(template, str):
            raise ValueError(f"prompt template {index} must be a string, got {template!r}")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as err:
            raise ValueError(f"prompt template {index} {template!r} is not a format string: {err}") from None
        if not fields:
            raise ValueError(f"prompt template {index} {template!r} has no '{{}}' for the class name")
        if fields != [""]:
            raise ValueError(
                f"prompt template {index} {template!r} must have exactly one '{{}}' and no "
                f"other fields, got {fields}"
            )
    if len(set(templates)) != len(templates):
        raise ValueError("the list of prompt templates has duplicates")
    return templates


def check_class_names(class_names):
    """Returns the class names as a list of non-empty strings.

    Arguments
    ---------
    class_names : list of str
        Name of each class, in class-index order (``"maple tree"``).

    Example
    -------
    >>> check_class_names(["apple", "maple tree"])
    ['apple', 'maple tree']
    >>> check_class_names(["apple", " "])
    Traceback (most recent call last):
    ...
    ValueError: class 1 has no name: every class needs words for its prompts
    """
    names = list(class_names)
    if not names:
        raise ValueError("no class names: the text teacher needs one name per class")
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class {index} has no name: every class needs words for its prompts")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"class names must be unique; repeated: {', '.join(duplicates)}")
    return [name.strip() for name in names]


def build_prompts(class_names, templates):
    """Every prompt, class-major: ``prompts[c * T + t] = templates[t].format(names[c])``.

    Arguments
    ---------
    class_names : list of str
        One name per class.
    templates : list of str
        Format strings with one ``{}`` (see :func:`get_templates`).

    Returns
    -------
    list of str
        ``len(class_names) * len(templates)`` prompts.

    Example
    -------
    >>> build_prompts(["cat", "dog"], ["a {}.", "the {}!"])
    ['a cat.', 'the cat!', 'a dog.', 'the dog!']
    """
    names = check_class_names(class_names)
    templates = get_templates(templates)
    return [template.format(name) for name in names for template in templates]


def _rank():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


@register_checkpoint_hooks
class TemplateSampler:
    """Draws one template index per training sample, seeded and resumable.

    Each call draws a batch of indices from a generator seeded by
    ``(seed, rank, step)``, so the draws depend only on how many batches
    came before: the state is one integer, saved by SpeechBrain's
    checkpointer (list the sampler under ``recoverables``), and a resumed
    run continues with exactly the draws it would have made. Under DDP
    every rank draws its own stream.

    Arguments
    ---------
    seed : int
        Seed of the draws.

    Example
    -------
    >>> sampler = TemplateSampler(seed=3)
    >>> first = sampler.draw(6, num_templates=80)
    >>> first.shape, bool((first >= 0).all() and (first < 80).all()), sampler.step
    (torch.Size([6]), True, 1)
    >>> again = TemplateSampler(seed=3)
    >>> torch.equal(again.draw(6, 80), first)
    True
    """

    def __init__(self, seed=0):
        self.seed = int(seed)
        self.step = 0

    def _generator(self, step):
        blob = f"{self.seed}:{_rank()}:{step}".encode()
        value = int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little")
        return torch.Generator().manual_seed(value & ((1 << 63) - 1))

    def draw(self, batch_size, num_templates):
        """Returns ``[batch_size]`` template indices in ``[0, num_templates)`` (CPU)."""
        if num_templates < 1:
            raise ValueError(f"num_templates must be >= 1, got {num_templates}")
        indices = torch.randint(num_templates, (int(batch_size),), generator=self._generator(self.step))
        self.step += 1
        return indices

    @mark_as_saver
    def _save(self, path):
        torch.save({"seed": self.seed, "step": self.step}, path)

    @mark_as_loader
    def _load(self, path, end_of_epoch=False):
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.seed = int(state["seed"])
        self.step = int(state["step"])

    def __repr__(self):
        return f"TemplateSampler(seed={self.seed}, step={self.step})"
