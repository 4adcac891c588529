"""Vocabularies: class names with synonyms and thing/stuff flags (the seen set is ``InferenceOptions.seen``).

Reads the official ``id:syn1,syn2,...`` files (``*_with_prompt_eng.txt``) and inline lists
(``"cat;dog,puppy;sky"``: classes separated by ``;``, synonyms by ``,``). No torch model code here:
the runtime uses it without the reference model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from cmpf.errors import InputError

# The 14 ViLD prompts (FZ:frozenseg/frozenseg.py VILD_PROMPT), in the official order.
VILD_PROMPT = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)


# Thing classes (contiguous indices) of the official panoptic vocabularies, from the detectron2 /
# FrozenSeg category tables (``isthing``); ``--things NAME`` uses them with the matching vocabulary file.
THING_INDICES = {
    "ade20k-150": (
        7, 8, 10, 12, 14, 15, 18, 19, 20, 22, 23, 24, 27, 30, 31, 32, 33, 35, 36, 37, 38, 39, 41, 42, 43, 44, 45,
        47, 49, 50, 53, 55, 56, 57, 58, 62, 64, 65, 66, 67, 69, 70, 71, 72, 73, 74, 75, 76, 78, 80, 81, 82, 83,
        85, 86, 87, 88, 89, 90, 92, 93, 95, 97, 98, 102, 103, 104, 107, 108, 110, 111, 112, 115, 116, 118, 119,
        120, 121, 123, 124, 125, 126, 127, 129, 130, 132, 133, 134, 135, 136, 137, 138, 139, 142, 143, 144, 146,
        147, 148, 149,
    ),
    "coco-panoptic": tuple(range(80)),
    "cityscapes": tuple(range(11, 19)),
}
THING_VOCAB_SIZES = {"ade20k-150": 150, "coco-panoptic": 133, "cityscapes": 19}


class VocabularyError(InputError):
    """A vocabulary that cannot be used (empty, duplicated names, unreadable file)."""


@dataclass(frozen=True)
class Vocabulary:
    """Classes as tuples of synonyms (first synonym = display name) and their thing flags."""

    classes: tuple[tuple[str, ...], ...]
    is_thing: tuple[bool, ...]

    def __post_init__(self) -> None:
        if not self.classes:
            raise VocabularyError("the vocabulary is empty")
        if len(self.is_thing) != len(self.classes):
            raise VocabularyError("is_thing must have one flag per class")
        # Identical classes are ambiguous; a shared first name with other synonyms is not (ADE-847
        # has "pot", "bag", ... twice with different synonym lists).
        seen: dict[tuple[str, ...], int] = {}
        for i, syns in enumerate(self.classes):
            if not syns or any(not s for s in syns):
                raise VocabularyError(f"class {i} has an empty name")
            if syns in seen:
                raise VocabularyError(f"duplicate class name {syns[0]!r} (classes {seen[syns]} and {i})")
            seen[syns] = i

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [syns[0] for syns in self.classes]

    @property
    def num_synonyms(self) -> list[int]:
        return [len(s) for s in self.classes]

    def prompts(self) -> list[str]:
        """All prompts, class-major then synonym then template (the official order)."""
        return [t.format(s) for syns in self.classes for s in syns for t in VILD_PROMPT]

    def to_json(self) -> dict:
        return {"classes": [list(c) for c in self.classes], "is_thing": list(self.is_thing)}

    @staticmethod
    def from_json(data: dict) -> "Vocabulary":
        return Vocabulary(tuple(tuple(c) for c in data["classes"]), tuple(bool(t) for t in data["is_thing"]))


def _split_synonyms(text: str) -> tuple[str, ...]:
    # official rule: ", " normalised to "," before splitting
    return tuple(s.strip() for s in text.replace(", ", ",").split(","))


def _thing_flags(names: Sequence[str], things: Optional[Iterable[str]], default: bool) -> tuple[bool, ...]:
    if things is None:
        return tuple(default for _ in names)
    things = list(things)
    if len(things) == 1 and things[0] in THING_INDICES:  # a named official split, e.g. "ade20k-150"
        if len(names) != THING_VOCAB_SIZES[things[0]]:
            raise VocabularyError(f"--things {things[0]} is for a {THING_VOCAB_SIZES[things[0]]}-class vocabulary, "
                                  f"this one has {len(names)} classes")
        indices = set(THING_INDICES[things[0]])
        return tuple(i in indices for i in range(len(names)))
    things = set(things)
    unknown = things - set(names)
    if unknown:
        raise VocabularyError(f"--things names classes not in the vocabulary: {sorted(unknown)}")
    return tuple(n in things for n in names)


def parse_class_list(text: str, things: Optional[Iterable[str]] = None) -> Vocabulary:
    """Parse ``"cat;dog,puppy;sky"``. Without ``things`` every class is a thing."""
    classes = tuple(_split_synonyms(c) for c in text.split(";") if c.strip())
    if not classes:
        raise VocabularyError("empty vocabulary: the class list names no class")
    return Vocabulary(classes, _thing_flags([c[0] for c in classes], things, True))


def load_vocabulary_file(path: str | Path, things: Optional[Iterable[str]] = None) -> Vocabulary:
    """Read an official ``id:syn1,syn2`` file (``invalid_class_id`` lines skipped) or a plain list.

    Plain lists have one class per line (synonyms separated by ``,``).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise VocabularyError(f"cannot read vocabulary file {path}: {e}") from None
    classes = []
    for line in lines:
        line = line.strip()
        if not line or "invalid_class_id" in line:
            continue
        head, sep, tail = line.partition(":")
        text = tail if sep and head.strip().isdigit() else line
        classes.append(_split_synonyms(text))
    if not classes:
        raise VocabularyError(f"empty vocabulary: {path} has no classes")
    names = [c[0] for c in classes]
    return Vocabulary(tuple(classes), _thing_flags(names, things, True))


def parse_things(text: Optional[str]) -> Optional[list[str]]:
    """``--things 'cat;dog'`` (or an official split name) → names; None keeps every class a thing."""
    return [t.strip() for t in text.split(";") if t.strip()] if text else None


def load_vocabulary(vocab: Optional[str] = None, classes: Optional[str] = None, things: Optional[str] = None,
                    *, required: bool = True) -> Optional[Vocabulary]:
    """The vocabulary of ``--vocab FILE`` or ``--classes 'cat;dog,puppy'`` (at most one), with ``--things``.

    Returns None when neither is given and ``required`` is False.
    """
    if vocab is not None and classes is not None:
        raise VocabularyError("give one of --vocab FILE and --classes 'cat;dog,puppy;sky', not both")
    if vocab is None and classes is None:
        if required:
            raise VocabularyError("no vocabulary: give --vocab FILE or --classes 'cat;dog,puppy;sky'")
        if things:
            raise VocabularyError("--things needs a vocabulary (--vocab FILE or --classes LIST)")
        return None
    names = parse_things(things)
    return load_vocabulary_file(vocab, names) if vocab is not None else parse_class_list(classes, names)


def vocabulary_ids(path: str) -> Optional[tuple[int, ...]]:
    """The ``id:`` of every class of an official vocabulary file, or None for a plain list.

    Follows ``cmpf.vocabulary.load_vocabulary_file``'s reading of the lines (blank and
    ``invalid_class_id`` lines skipped), so the ids line up with its classes.
    """
    ids = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or "invalid_class_id" in line:
            continue
        head, sep, _ = line.partition(":")
        ids.append(int(head) if sep and head.strip().isdigit() else None)
    if all(i is None for i in ids):
        return None
    if None in ids:
        raise InputError(f"--vocab {path}: some classes have an id: and some do not; give every line its id or none")
    return tuple(ids)
