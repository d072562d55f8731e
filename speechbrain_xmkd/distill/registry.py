"""Name -> class registry of distillation losses, so a yaml can name one.

Every loss registered here follows one call contract::

    loss(student, teacher, labels=None) -> Tensor | dict[str, Tensor]

``student`` is the student embedding ``F_S`` and ``teacher`` the (projected)
teacher embedding ``F_T``, both ``[batch, dim]`` (``[batch, 1, dim]`` is
accepted). A tensor result is either per-sample ``[batch]`` (the method has a
per-sample term, so quality weights apply sample by sample) or a scalar (a
batch-level method). A dict result names its terms; an entry called
``"task"`` is the student's own task loss, which the loss then includes
(classifier sharing, Eq. 10), so the :class:`~speechbrain_xmkd.Distiller`
does not add it a second time.
"""

_LOSSES = {}


def register_loss(name):
    """Class decorator: registers a loss class under ``name``.

    Arguments
    ---------
    name : str
        The name a yaml uses (``loss: soft_feature``).

    Example
    -------
    >>> import torch
    >>> @register_loss("doc_example_zero")
    ... class Zero(torch.nn.Module):
    ...     def forward(self, student, teacher, labels=None):
    ...         return student.new_zeros(student.shape[0])
    >>> build_loss("doc_example_zero")(torch.ones(2, 3), torch.ones(2, 3))
    tensor([0., 0.])
    """

    def decorator(cls):
        if name in _LOSSES and _LOSSES[name] is not cls:
            raise ValueError(
                f"distillation loss name '{name}' is already registered "
                f"by {_LOSSES[name].__qualname__}"
            )
        _LOSSES[name] = cls
        cls.registry_name = name
        return cls

    return decorator


def available_losses():
    """Sorted names of every registered loss.

    Example
    -------
    >>> "soft_feature" in available_losses()
    True
    """
    return sorted(_LOSSES)


def get_loss_class(name):
    """Returns the class registered under ``name``.

    An unknown name raises a ``KeyError`` that lists the valid ones.

    Example
    -------
    >>> get_loss_class("sof_feature")
    Traceback (most recent call last):
    ...
    KeyError: "unknown distillation loss 'sof_feature'; valid names: ...
    """
    try:
        return _LOSSES[name]
    except KeyError:
        raise KeyError(
            f"unknown distillation loss '{name}'; valid names: "
            + ", ".join(available_losses())
        ) from None


def build_loss(name, **kwargs):
    """Builds the loss registered under ``name`` with ``kwargs``.

    Usable from yaml: ``!apply:speechbrain_xmkd.distill.build_loss``.

    Example
    -------
    >>> build_loss("soft_feature", distance="l2", margin=0.5).margin
    0.5
    """
    return get_loss_class(name)(**kwargs)
