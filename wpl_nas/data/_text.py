"""Word-level text in the Penn Treebank layout: ``train.txt``, ``valid.txt``, ``test.txt``.

Each file holds one sentence per line, words separated by spaces (PTB's preprocessed release
already maps rare words to ``<unk>``). Every line ends with an ``<eos>`` token; the
vocabulary is the training file's words, and a word of the validation or test file that is
not in it reads as ``<unk>``. Each split's token stream is cut into windows of
``SEQUENCE_LENGTH + 1`` tokens: the input is a window's first ``SEQUENCE_LENGTH`` tokens and
the target the same window shifted by one, so a sample is ``(tokens (T,), next tokens (T,))``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from wpl_nas.data._bundle import DataBundle, Recipe, register_dataset
from wpl_nas.errors import ConfigError

__all__ = ["EOS", "SEQUENCE_LENGTH", "UNK", "load_text_dataset", "read_vocabulary"]

EOS, UNK = "<eos>", "<unk>"
#: Tokens per training window (ENAS and the WPL paper train with 35-step BPTT).
SEQUENCE_LENGTH = 35
SPLIT_FILES = ("train.txt", "valid.txt", "test.txt")


def _words(path: Path) -> list[str]:
    return [word for line in path.read_text(encoding="utf-8").splitlines() for word in [*line.split(), EOS]]


def read_vocabulary(words: list[str]) -> dict[str, int]:
    """``{word: id}`` in order of first appearance, with ``<unk>`` and ``<eos>`` always present."""
    vocab: dict[str, int] = {}
    for word in [UNK, EOS, *words]:
        vocab.setdefault(word, len(vocab))
    return vocab


def _windows(words: list[str], vocab: dict[str, int], length: int) -> TensorDataset:
    ids = torch.tensor([vocab.get(w, vocab[UNK]) for w in words], dtype=torch.long)
    n = (len(ids) - 1) // length  # whole windows only: a window needs its next-token targets
    x = ids[: n * length].view(n, length)
    y = ids[1: n * length + 1].view(n, length)
    return TensorDataset(x, y)


def load_text_dataset(name: str, *, data_dir: Path, download: bool = False, val_fraction: float = 0.2,
                      seed: int = 0, sequence_length: int = SEQUENCE_LENGTH) -> DataBundle:
    """Load ``data_dir/<name>/{train,valid,test}.txt`` as a language-modelling :class:`DataBundle`.

    The official ``valid.txt`` is the validation split (``val_fraction`` and ``seed`` are not
    needed: the layout fixes the split); ``num_classes`` is the vocabulary size and the
    bundle's metric is perplexity.

    Raises:
        ConfigError: a file is missing, or a split is too short for one window; ``download``
            was asked for (Penn Treebank's licence does not allow it: bring the files).
    """
    folder = data_dir / name
    missing = [f for f in SPLIT_FILES if not (folder / f).is_file()]
    if missing:
        hint = " (downloading is not offered: Penn Treebank is licensed; bring the files)" if download else ""
        raise ConfigError(f"dataset {name!r} needs {', '.join(missing)} in {str(folder)!r}: text in the Penn "
                          f"Treebank layout, one sentence per line{hint}")
    train, valid, test = (_words(folder / f) for f in SPLIT_FILES)
    vocab = read_vocabulary(train)
    splits = []
    for file, words in zip(SPLIT_FILES, (train, valid, test), strict=True):
        data = _windows(words, vocab, sequence_length)
        if len(data) == 0:
            raise ConfigError(f"{folder / file} has {len(words)} tokens, fewer than one window of "
                              f"{sequence_length + 1}")
        splits.append(data)
    return DataBundle(name=name, train=splits[0], val=splits[1], test=splits[2], num_classes=len(vocab),
                      input_shape=(sequence_length,), metric="perplexity")


# ENAS's PTB training: plain SGD at a large learning rate with a tight gradient clip.
@register_dataset("ptb", recipe=Recipe(lr=20.0, weight_decay=1e-6, batch_size=64, momentum=0.0, grad_clip=0.25))
def load_ptb(*, data_dir: Path, download: bool = False, val_fraction: float = 0.2, seed: int = 0) -> DataBundle:
    """Penn Treebank (Mikolov et al. 2010's preprocessed release), or any text in its layout,
    from ``data_dir/ptb/``; see :func:`load_text_dataset`."""
    return load_text_dataset("ptb", data_dir=data_dir, download=download, val_fraction=val_fraction, seed=seed)
