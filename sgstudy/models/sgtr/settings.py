"""SGTR's sizes and the switches of its ``tiny`` simplifications (SPEC §5).

``paper`` holds the authors' VG configuration; every simplification ``tiny`` makes to train on a
CPU is a named switch here, off in ``paper``, and reported by ``SgtrModel.describe()``:

- ``dynamic_queries``: initial query contents from one decoder layer over the entity states
  (off: zero contents, the static embeddings only as query positions, as in DETR);
- ``predicate_encoder``: a separate transformer encoder over the entity detector's memory
  (off: the memory's 1×1 projection plus positions feeds the predicate sub-decoder directly);
- ``score_shaping``: the 0.6 exponents of the assembling score and the 32^(−x) shaping of the
  matcher's probability and GIoU costs (off: exponents 1 and costs −x);
- ``candidate_expansion``: the matcher pairs each query with its top-25 assembled entity pairs
  (off: top 1);
- ``duplicate_filter``: test-time removal of duplicate triplets;
- ``output_caps``: the top-4,096 / top-300 cuts of test-time post-processing (off: no cut).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# The authors' constants (SPEC §5); the switches above decide whether they apply.
SCORE_EXPONENT = 0.6
COST_BASE = 32.0
TRAIN_TOPK = 25
TEST_TOPK = 3
PRE_DEDUP_CAP = 4096
OUTPUT_CAP = 300
SELF_PAIR_GIOU = 0.95
DUPLICATE_IOU = 0.8


@dataclass(frozen=True)
class SgtrSettings:
    """Widths, depths and switches of one SGTR preset."""

    d_model: int  # predicate node generator width
    heads: int
    ffn: int
    dropout: float
    encoder_layers: int  # predicate encoder depth (when ``predicate_encoder``)
    decoder_levels: int  # structural decoder levels (each with deep supervision but the last)
    num_queries: int  # predicate queries
    test_topk: int  # entities per role at test time
    dynamic_queries: bool
    predicate_encoder: bool
    score_shaping: bool
    candidate_expansion: bool
    duplicate_filter: bool
    output_caps: bool

    @property
    def train_topk(self) -> int:
        return TRAIN_TOPK if self.candidate_expansion else 1

    def switches(self) -> dict[str, bool]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.type == "bool"}


SGTR_PRESETS: dict[str, SgtrSettings] = {
    "paper": SgtrSettings(
        d_model=256, heads=8, ffn=2048, dropout=0.1, encoder_layers=3, decoder_levels=6,
        num_queries=180, test_topk=TEST_TOPK, dynamic_queries=True, predicate_encoder=True,
        score_shaping=True, candidate_expansion=True, duplicate_filter=True, output_caps=True,
    ),
    # Small enough for a 2-core CPU on 128-px synthetic images; the detector's memory is already
    # encoded, so the separate predicate encoder is the first thing left out.
    "tiny": SgtrSettings(
        d_model=64, heads=4, ffn=128, dropout=0.0, encoder_layers=1, decoder_levels=3,
        num_queries=30, test_topk=TEST_TOPK, dynamic_queries=True, predicate_encoder=False,
        score_shaping=True, candidate_expansion=False, duplicate_filter=True, output_caps=True,
    ),
}  # fmt: skip
