"""The CLIP tokenizer, built offline from the BPE table shipped in the open_clip_torch wheel.

Why: the tiny profile must not download anything, and transformers 5's
`CLIPTokenizer(vocab_file=..., merges_file=...)` silently builds a 3-token
vocabulary. So we write `vocab.json` + `merges.txt` exactly as OpenAI's
SimpleTokenizer derives them (49,408 tokens, 48,894 merges; ids match CLIP) and
load them with `CLIPTokenizer.from_pretrained(dir)`.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from defectgen.errors import ConfigError

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # the merges OpenAI's tokenizer uses (the file holds more)
MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode map."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def bpe_path() -> Path:
    """The BPE table inside the installed open_clip_torch (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the tiny profile builds its CLIP tokenizer from open_clip_torch's BPE table, "
            "but open_clip_torch is not installed; run `make setup` "
            "(or pip install open_clip_torch)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BPE_NAME
    if not path.is_file():
        raise ConfigError(f"{path}: open_clip_torch is installed but its BPE table is missing")
    return path


def write_tokenizer_files(out_dir: Path) -> Path:
    """Write vocab.json, merges.txt and the tokenizer config into `out_dir`; returns it."""
    with gzip.open(bpe_path()) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    config = {
        "model_max_length": MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out_dir


def build_tokenizer(work_dir: Path):
    """A transformers CLIPTokenizer identical to OpenAI CLIP's, built offline under `work_dir`."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(
        str(write_tokenizer_files(work_dir)), model_max_length=MAX_LENGTH
    )
