"""Atomic file writes: an interrupted run never leaves a file that looks complete.

Every writer of prepared data, caches and exported models goes through
:func:`atomic_write`: the content goes to a hidden temporary name ending in
:data:`PARTIAL` in the same folder, then one ``os.replace`` puts it in place.
A crash leaves at most a ``*.partial`` file, which :func:`remove_partial_files`
clears on the next run.
"""

import csv
import io
import os
import uuid

PARTIAL = ".partial"


def atomic_write(path, write):
    """Calls ``write(tmp_path)``, then renames the temporary file to ``path``.

    Arguments
    ---------
    path : str
        Final file name; its folder is created if needed.
    write : callable
        ``tmp_path -> None``: writes the whole content to ``tmp_path``.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "sub", "a.txt")
    >>> atomic_write(path, lambda tmp: open(tmp, "w").write("done"))
    >>> open(path).read(), os.listdir(os.path.dirname(path))
    ('done', ['a.txt'])
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}{PARTIAL}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path, data):
    """Writes ``data`` (bytes) to ``path`` atomically."""

    def write(tmp):
        with open(tmp, "wb") as handle:
            handle.write(data)

    atomic_write(path, write)


def write_if_changed(path, text):
    """Writes ``text`` unless the file already holds it (mtimes stay put).

    Returns
    -------
    bool
        Whether the file was written.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> write_if_changed(path, "x"), write_if_changed(path, "x"), write_if_changed(path, "y")
    (True, False, True)
    """
    data = text.encode("utf-8")
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            if handle.read() == data:
                return False
    atomic_write_bytes(path, data)
    return True


def remove_partial_files(folder):
    """Deletes the temporary files an interrupted writer left under ``folder``."""
    removed = 0
    for base, _, files in os.walk(folder):
        for name in files:
            if name.endswith(PARTIAL):
                os.remove(os.path.join(base, name))
                removed += 1
    return removed


def csv_text(rows, header):
    """The text of a CSV file (``\\n`` line ends), for :func:`write_if_changed`.

    Example
    -------
    >>> csv_text([["a", 1], ["b,c", 2]], ["ID", "n"])
    'ID,n\\na,1\\n"b,c",2\\n'
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
