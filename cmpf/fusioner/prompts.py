"""The 32 official prompt templates and their tokenisation (class name → (32, 77) int64 token ids).

Class names go in verbatim (HSNet spellings such as ``diningtable``, ``pottedplant``). Tokens come
from open_clip's copy of the CLIP BPE tokenizer, which cleans text exactly as ``clip.tokenize``
(ftfy, html unescape, whitespace collapse, lower case). ``clip.tokenize`` raises when a prompt
exceeds 77 tokens; so do we, where open_clip would silently truncate.
"""

from __future__ import annotations

import functools

import torch

from cmpf.errors import InputError
from cmpf.spec import CONTEXT_LENGTH

# ``FU:model/text_encoder.py:45-82``, in this order; only the first four end with a period.
TEMPLATES: tuple[str, ...] = (
    "a bad photo of the {category}.",
    "a photo of the large {category}.",
    "a photo of the small {category}.",
    "a cropped photo of a {category}.",
    "This is a photo of a {category}",
    "This is a photo of a small {category}",
    "This is a photo of a medium {category}",
    "This is a photo of a large {category}",
    "This is a masked photo of a {category}",
    "This is a masked photo of a small {category}",
    "This is a masked photo of a medium {category}",
    "This is a masked photo of a large {category}",
    "This is a cropped photo of a {category}",
    "This is a cropped photo of a small {category}",
    "This is a cropped photo of a medium {category}",
    "This is a cropped photo of a large {category}",
    "A photo of a {category} in the scene",
    "a bad photo of the {category} in the scene",
    "a photo of the large {category} in the scene",
    "a photo of the small {category} in the scene",
    "a cropped photo of a {category} in the scene",
    "a photo of a masked {category} in the scene",
    "There is a {category} in the scene",
    "There is the {category} in the scene",
    "This is a {category} in the scene",
    "This is the {category} in the scene",
    "This is one {category} in the scene",
    "There is a masked {category} in the scene",
    "There is the masked {category} in the scene",
    "This is a masked {category} in the scene",
    "This is the masked {category} in the scene",
    "This is one masked {category} in the scene",
)


class FusionerInputError(InputError):
    """Bad input to Fusioner inference (image, class names, text); the message is one line naming it."""


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


def class_prompts(class_name: str) -> list[str]:
    """The 32 prompts of one class name, verbatim."""
    return [t.format(category=class_name) for t in TEMPLATES]


def tokenize_class(class_name: str) -> torch.Tensor:
    """One class name → (32, 77) int64 token ids: SOT, BPE, EOT, zero padding.

    Raises ``FusionerInputError`` for an empty name or when a prompt would exceed 77 tokens.
    """
    if not isinstance(class_name, str) or not class_name.strip():
        raise FusionerInputError(f"class name {class_name!r} is empty")
    tok = _tokenizer()
    sot, eot = tok.sot_token_id, tok.eot_token_id
    rows = []
    for prompt in class_prompts(class_name):
        ids = [sot] + tok.encode(prompt) + [eot]
        if len(ids) > CONTEXT_LENGTH:
            raise FusionerInputError(
                f"class name {class_name[:40]!r}{'...' if len(class_name) > 40 else ''} gives a {len(ids)}-token "
                f"prompt ({prompt.replace(class_name, '{name}')!r}); CLIP takes at most {CONTEXT_LENGTH}"
            )
        rows.append(ids + [0] * (CONTEXT_LENGTH - len(ids)))
    return torch.tensor(rows, dtype=torch.int64)
