"""Confinement: every file foresight reads from a folder the user named stays inside that folder.

A model, tokenizer, checkpoint or prepared-data folder names its own files (an index lists shards, ``meta.json``
lists token shards, DCP's ``.metadata`` lists shard files), and any file in it may be a symbolic link. Both
could make foresight read a file the user never meant to hand over (``../../home/me/.ssh/id_rsa`` as a shard,
a ``tokenizer.model`` linked to a private file that ``import`` would then copy out as a readable file). So a
name is resolved the way the operating system will resolve it (``os.path.realpath``: every link followed) and
must land inside the folder's own real path; otherwise it is one line naming the file. A link that stays inside
the folder is fine, and so is a folder that is itself a link (its real path is the root).

The same module keeps foresight from running code a folder carries: transformers imports a folder's Python
files when its ``config.json`` or ``tokenizer_config.json`` has an ``auto_map``, and asks on stdin when
``trust_remote_code`` is left unset. ``NO_REMOTE_CODE`` is passed to every transformers load, and
``remote_code_files`` names what a folder asks for, for the one-line refusal.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from foresight.errors import ForesightError

# Passed to every transformers / lm-eval load: never import a folder's code, never ask on stdin.
NO_REMOTE_CODE = {"trust_remote_code": False}
_CONFIGS_WITH_CODE = ("config.json", "tokenizer_config.json", "processor_config.json",
                      "preprocessor_config.json", "feature_extractor_config.json")


def _within(root: str, real: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _roots(folder) -> list[str]:
    """The real paths a folder's files may resolve into: the folder's own, and for a snapshot of the Hugging Face
    cache (``models--org--name/snapshots/<revision>/``, whose files are links into ``../../blobs/``) that
    repository's blob store, which is the same download."""
    root = os.path.realpath(folder)
    parent = os.path.dirname(root)
    if os.path.basename(parent) == "snapshots" and os.path.basename(os.path.dirname(parent)).startswith(
            ("models--", "datasets--")):
        return [root, os.path.join(os.path.dirname(parent), "blobs")]
    return [root]


def inside(folder, name, what: str = "file") -> Path:
    """``folder / name`` if, with every symbolic link followed, it stays inside ``folder``'s real path;
    otherwise a ``ForesightError`` naming the file. ``name`` comes from a file or a listing (a shard name, a
    relative path), so anything but a non-empty relative path is refused too."""
    folder = Path(folder)
    if not isinstance(name, (str, os.PathLike)) or not str(name) or "\0" in str(name) or os.path.isabs(name):
        raise ForesightError(f"{folder}: the {what} name {name!r} is not a file inside the folder (a folder may "
                             f"name only relative paths inside itself)")
    path = folder / name
    roots, real = _roots(folder), os.path.realpath(path)
    root = roots[0]
    if not any(_within(r, real) for r in roots):
        raise ForesightError(f"{path} is not a file inside {root}: it resolves to {real}; foresight reads only "
                             f"files inside the folder you name (copy the file in instead of linking to it)")
    return path


def confine_folder(folder) -> None:
    """What to check before handing ``folder`` to a library (transformers, lm-eval) that opens whatever files it
    finds there: every entry of the folder and of its sub-folders one level down (where such libraries look:
    ``additional_chat_templates/``, ...) resolves inside it, and so does every shard a weight index
    (``*.index.json``) lists. Links to folders are checked, not descended into; deeper levels are not walked,
    so a large folder costs no more than its listing."""
    folder = Path(folder)
    for top, dirs, files in os.walk(folder):
        depth = 0 if top == str(folder) else os.path.relpath(top, folder).count(os.sep) + 1
        for name in (*dirs, *files):
            inside(folder, os.path.relpath(os.path.join(top, name), folder))
        if depth >= 1:
            dirs.clear()
    for index in folder.glob("*.index.json"):
        index_shards(index, folder)


def index_shards(index: Path, folder: Path) -> list[str]:
    """The shard names a Hugging Face weight index (``*.index.json``) lists, each checked to be inside
    ``folder``; one line naming what is wrong with an index that is not JSON, has no ``weight_map`` object or
    lists a shard that is not a file name."""
    try:
        data = json.loads(inside(folder, index.name).read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError too; nested beyond reason
        raise ForesightError(f"{index} is not a valid weight index (not JSON: {str(e).splitlines()[0][:80]})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ForesightError(f"{index} is not a valid weight index (needs a 'weight_map' object of tensor name -> "
                             f"shard file)")
    bad = next((v for v in weight_map.values() if not isinstance(v, str)), None)
    if bad is not None:
        raise ForesightError(f"{index} is not a valid weight index (weight_map holds {json.dumps(bad)[:60]}, not a "
                             f"shard file name)")
    names = sorted(set(weight_map.values()))
    for name in names:
        inside(folder, name, "shard")
    return names


def remote_code_files(folder) -> list[str]:
    """The config files of ``folder`` that declare an ``auto_map`` (code transformers would import from the
    folder), for a one-line refusal; unreadable files are left to the loader to report."""
    found = []
    for name in _CONFIGS_WITH_CODE:
        path = Path(folder) / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            found.append(name)
    return found


def refuse_remote_code(folder, what: str) -> None:
    """One line if ``folder`` asks for code of its own (``auto_map``) and ``what`` cannot be loaded without it."""
    found = remote_code_files(folder)
    if found:
        raise ForesightError(f"{folder}: {found[0]} asks for code from the folder (auto_map), and foresight never "
                             f"runs code from a folder; {what}")


def note_ignored_code(folder) -> None:
    """Say on stderr that ``folder`` asks for code of its own which was not run (the load used the library's own
    classes), so a model that needs its code is not mistaken for one that does not."""
    import sys

    for name in remote_code_files(folder):
        print(f"foresight: note: {Path(folder) / name} asks for code from the folder (auto_map); ignored, "
              f"foresight never runs code from a folder", file=sys.stderr)


def copy_inside(folder, name, dst) -> Path:
    """Copy ``folder / name`` (checked to be inside ``folder``) to ``dst`` atomically, with the permissions a
    new file gets (``foresight.io.file_mode``), never the source's."""
    from foresight.io import atomic_write

    return atomic_write(Path(dst), inside(folder, name).read_bytes())
