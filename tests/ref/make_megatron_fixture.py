#!/usr/bin/env python3
"""Writes tests/fixtures/data/megatron/: two tiny indexed datasets made by megatron-core's own
IndexedDatasetBuilder (megatron/core/datasets/indexed_dataset.py), plus expected.json with the token
ids of every sequence of every document, which tests/unit/test_indexed_dataset.cpp compares against.

    pip install --no-deps megatron-core   # imports on CPU with torch and numpy present (0.16.1 used)
    python3 tests/ref/make_megatron_fixture.py

The datasets are written exactly as Megatron's tools/preprocess_data.py writes them: dtype from
DType.optimal_dtype(vocab_size) (uint16 below 65500 ids, int32 above), documents via add_document
(several sequences in one document, as with --split-sentences, and an empty document), plus one
document through add_item + end_document. Megatron's own IndexedDataset reads each file back
before the expected ids are stored, so the fixture is checked by both sides.
"""
import json
import os
import random
import sys

import numpy
import torch

try:
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder
except ImportError as e:  # the fixture must come from Megatron's code, not from a re-implementation
    sys.exit(f"megatron-core is needed (pip install --no-deps megatron-core): {e}")

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "data", "megatron")


def make(name, vocab_size, seed):
    rng = random.Random(seed)
    dtype = DType.optimal_dtype(vocab_size)
    prefix = os.path.join(OUT, name)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    documents = []  # list of documents, each a list of sequences (lists of ids)
    for d in range(7):
        if d == 3:
            documents.append([])  # an empty text: Megatron's add_document([], [])
            builder.add_document(torch.tensor([], dtype=torch.int64), [])
            continue
        n_seq = 1 if d % 2 == 0 else rng.randint(2, 3)
        seqs = [[rng.randrange(vocab_size) for _ in range(rng.randint(1, 9))] for _ in range(n_seq)]
        seqs[-1][-1] = vocab_size - 1  # the largest id ends every document (EOD-like, and the dtype's range)
        documents.append(seqs)
        flat = [t for s in seqs for t in s]
        builder.add_document(torch.tensor(flat, dtype=torch.int64), [len(s) for s in seqs])
    # One more document sequence by sequence, as Megatron's add_item + end_document.
    seqs = [[rng.randrange(vocab_size) for _ in range(4)], [0, 1, vocab_size - 1]]
    for s in seqs:
        builder.add_item(torch.tensor(s, dtype=torch.int64))
    builder.end_document()
    documents.append(seqs)
    builder.finalize(prefix + ".idx")

    # Megatron reads it back: what we store is what Megatron sees.
    ds = IndexedDataset(prefix)
    flat_seqs = [s for doc in documents for s in doc]
    assert len(ds) == len(flat_seqs)
    for i, s in enumerate(flat_seqs):
        assert ds[i].tolist() == s, (name, i)
    assert ds.document_indices.tolist()[0] == 0 and len(ds.document_indices) == len(documents) + 1
    return {"dtype": numpy.dtype(dtype).name, "vocab_size": vocab_size, "documents": documents}


def main():
    os.makedirs(OUT, exist_ok=True)
    import megatron.core

    expected = {
        "generator": f"megatron-core {getattr(megatron.core, '__version__', '?')} IndexedDatasetBuilder",
        "datasets": {
            "uint16_docs": make("uint16_docs", 1000, seed=1),
            "int32_docs": make("int32_docs", 129280, seed=2),
        },
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
