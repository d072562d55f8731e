"""Image-classification metrics: top-k accuracy and cross-modal matching (Table 8).

Cross-modal matching asks whether the student learned the teacher's
modality-shared space: each test image's student embedding ``F_S`` is
compared with one text embedding per class, taken through the trained
projection head (``F_T`` of every (class, template) prompt, averaged over
templates), and the nearest class must be the image's class. Chance is
``1 / num_classes``.
"""

import torch
import torch.nn.functional as F


def topk_accuracy(logits, labels, k=1):
    """Share of rows whose label is among the ``k`` largest logits.

    ``k`` is clipped to the number of classes.

    Arguments
    ---------
    logits : torch.Tensor
        ``[N, C]``.
    labels : torch.Tensor
        ``[N]`` class indices.
    k : int
        How many top classes count.

    Returns
    -------
    float

    Example
    -------
    >>> logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    >>> topk_accuracy(logits, torch.tensor([1, 2, 0])), topk_accuracy(logits, torch.tensor([1, 2, 0]), k=2)
    (0.3333333333333333, 0.6666666666666666)
    """
    if logits.dim() != 2 or labels.reshape(-1).shape[0] != logits.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    k = min(int(k), logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hits = (top == labels.reshape(-1, 1).to(top.device)).any(dim=1)
    return int(hits.sum()) / hits.shape[0]


def class_text_embeddings(prompt_embeddings, project=None, batch_size=4096):
    """One embedding per class in the student space: mean over templates of ``F_T``.

    Arguments
    ---------
    prompt_embeddings : torch.Tensor
        Raw teacher embeddings ``E_T`` of every prompt, ``[C, T, D]``.
    project : callable, optional
        ``E_T [n, D] -> F_T [n, D_s]`` (the trained projection head, in eval
        mode). None: the raw embeddings.
    batch_size : int
        Prompts per call of ``project``.

    Returns
    -------
    torch.Tensor
        ``[C, D_s]``.

    Example
    -------
    >>> e = torch.tensor([[[1.0, 0.0], [3.0, 0.0]], [[0.0, 2.0], [0.0, 4.0]]])
    >>> class_text_embeddings(e, project=lambda x: 2 * x)
    tensor([[4., 0.],
            [0., 6.]])
    """
    classes, templates, dim = prompt_embeddings.shape
    flat = prompt_embeddings.reshape(-1, dim)
    if project is not None:
        with torch.no_grad():
            flat = torch.cat([project(flat[i : i + batch_size]) for i in range(0, flat.shape[0], batch_size)])
    return flat.reshape(classes, templates, -1).mean(dim=1)


def matching_accuracy(student, class_embeddings, labels, metric="cosine"):
    """Cross-modal matching: share of images whose nearest class text is their class.

    Arguments
    ---------
    student : torch.Tensor
        Student embeddings ``[N, D]``.
    class_embeddings : torch.Tensor
        One embedding per class in the same space, ``[C, D]``.
    labels : torch.Tensor
        ``[N]`` class indices.
    metric : str
        ``"cosine"`` (largest cosine) or ``"l2"`` (smallest distance).

    Returns
    -------
    dict
        ``{"accuracy": float, "chance": 1 / C, "metric": metric}``.

    Example
    -------
    >>> classes = torch.eye(3)
    >>> images = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.1], [0.0, 0.0, 5.0], [1.0, 0.0, 0.1]])
    >>> matching_accuracy(images, classes, torch.tensor([0, 1, 2, 2]))
    {'accuracy': 0.75, 'chance': 0.3333333333333333, 'metric': 'cosine'}
    """
    if student.dim() != 2 or class_embeddings.dim() != 2 or student.shape[1] != class_embeddings.shape[1]:
        raise ValueError(
            f"student embeddings {tuple(student.shape)} and class embeddings "
            f"{tuple(class_embeddings.shape)} are not in one space"
        )
    student = student.float()
    class_embeddings = class_embeddings.float().to(student.device)
    if metric == "cosine":
        scores = F.normalize(student, dim=1) @ F.normalize(class_embeddings, dim=1).T
    elif metric == "l2":
        scores = -torch.cdist(student, class_embeddings)
    else:
        raise ValueError(f"unknown matching metric '{metric}'; valid: cosine, l2")
    predicted = scores.argmax(dim=1)
    hits = predicted == labels.reshape(-1).to(predicted.device)
    accuracy = int(hits.sum()) / hits.shape[0]
    return {"accuracy": accuracy, "chance": 1.0 / class_embeddings.shape[0], "metric": metric}
