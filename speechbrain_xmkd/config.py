"""Yaml helpers: pick one of several named objects by a scalar key.

A paper table is a list of runs that differ in one or two choices (which
distillation loss, whether quality weights are on). With :func:`select`
each choice is a scalar in the yaml, so a table row is a command-line
override (``--method=kd``), not a new file or a Python branch.
"""

import functools


def select(options, name, what="option"):
    """Returns ``options[name]``, built if it is a ``!name:`` partial.

    Only the chosen entry is built, so the others cost nothing (a yaml can
    list every method of a table without instantiating seven losses).

    Arguments
    ---------
    options : dict
        Name -> object, ``!name:`` partial or class (built with no
        arguments), or None.
    name : str
        The choice; an unknown name is an error listing the valid ones.
    what : str
        What is being chosen, for the error message (e.g. ``"method"``).

    Returns
    -------
    object
        The chosen object (or None).

    Example
    -------
    >>> import functools
    >>> opts = {"none": None, "list": functools.partial(list, "ab"), "dict": dict}
    >>> select(opts, "list"), select(opts, "dict"), select(opts, "none")
    (['a', 'b'], {}, None)
    >>> select(opts, "lst", what="method")
    Traceback (most recent call last):
    ...
    KeyError: "unknown method 'lst'; valid: dict, list, none"
    """
    key = str(name).lower() if isinstance(name, bool) else name
    if key not in options:
        raise KeyError(f"unknown {what} '{name}'; valid: " + ", ".join(sorted(map(str, options))))
    chosen = options[key]
    # hyperpyyaml turns `!name:Class` with arguments into a partial and
    # without arguments into the class itself: both are built here.
    if isinstance(chosen, (functools.partial, type)):
        return chosen()
    return chosen
