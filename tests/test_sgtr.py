"""SGTR and Align-SGTR: forward and backward, the parameters the two branches share, the
attention masks' ratio, and that alignment off is exactly the plain model."""

import dataclasses

import pytest
import torch

from sgstudy import metric_names
from sgstudy.config import AlignConfig, ModelConfig
from sgstudy.errors import ConfigError
from sgstudy.models import build_model
from sgstudy.models.sgtr.model import STREAMS, SgtrModel
from sgstudy.models.sgtr.settings import SGTR_PRESETS
from sgstudy.structures import SceneGraphPrediction, SceneGraphTarget

detr = pytest.importorskip("sgstudy.models.detr")  # the entity detector SGTR is built on

NUM_OBJECTS, NUM_PREDICATES = 6, 5
# The tiny preset, narrower still, and with every switch of the paper preset on.
SETTINGS = dataclasses.replace(
    SGTR_PRESETS["tiny"], d_model=32, ffn=64, num_queries=12, decoder_levels=2,
    predicate_encoder=True, candidate_expansion=True, dropout=0.1,
)  # fmt: skip


# A DETR smaller than tiny; untrained, its boxes would all coincide, so its box head is scaled up
# to spread them. (Untrained, the two roles still tend to pick the same entity, a self-pair that
# assembling drops: that predictions are not empty is checked on a trained model.)
DETR_WIDTHS = dataclasses.replace(
    detr.DETR_PRESETS["tiny"], hidden_dim=32, heads=2, encoder_layers=1, decoder_layers=1,
    ffn_dim=64, num_queries=8, min_size=64, max_size=64,
)  # fmt: skip


def batch():
    generator = torch.Generator().manual_seed(0)
    images = [
        torch.rand(3, 64, 64, generator=generator),
        torch.rand(3, 48, 64, generator=generator),
    ]
    boxes = torch.tensor(
        [[2.0, 2.0, 30.0, 30.0], [20.0, 10.0, 60.0, 40.0], [5.0, 30.0, 25.0, 46.0]]
    )
    targets = [
        SceneGraphTarget(7, (64, 64), boxes, torch.tensor([1, 2, 3]), torch.tensor([[0, 1, 2], [2, 0, 5]])),
        SceneGraphTarget(8, (48, 64), boxes[:2], torch.tensor([4, 6]), torch.tensor([[1, 0, 1]])),
    ]  # fmt: skip
    return images, targets


def make_model(align: AlignConfig, seed: int = 0) -> SgtrModel:
    torch.manual_seed(seed)
    detector = detr.build_detr(DETR_WIDTHS, NUM_OBJECTS)
    with torch.no_grad():
        detector.bbox_embed.layers[-1].weight.mul_(100.0)
    return SgtrModel(detector, NUM_PREDICATES, SETTINGS, align)


def test_forward_backward_and_predictions():
    model = make_model(AlignConfig(enabled=True, target="both")).train()
    images, targets = batch()
    losses = model(images, targets)
    assert set(model.loss_weights) == set(losses)
    # Every term has its column in the reports' runs.csv.
    assert set(losses) <= set(metric_names.LOSS_TERMS)
    assert set(losses) - {"loss_align"} == set(metric_names.SGTR_LOSS_TERMS)
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    total = sum(model.loss_weights[name] * value for name, value in losses.items())
    total.backward()
    assert all(p.grad is None for p in model.detector.parameters())
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable)
    assert losses["loss_align"].item() > 0.0  # masked attention changes the student
    model.eval()
    with torch.no_grad():
        predictions = model(images, targets)
    assert len(predictions) == 2 and isinstance(predictions[0], SceneGraphPrediction)
    for prediction in predictions:
        num_entities = prediction.boxes.shape[0]
        assert prediction.pairs.shape[1] == 2 and (prediction.pairs < num_entities).all()
        assert (prediction.pairs[:, 0] != prediction.pairs[:, 1]).all()
        assert prediction.predicate_scores.shape == (len(prediction.pairs), NUM_PREDICATES + 1)
        # At most top-k pairs per query.
        assert len(prediction.pairs) <= SETTINGS.num_queries * SETTINGS.test_topk


def test_branches_share_every_parameter_but_the_untied_heads():
    plain = make_model(AlignConfig(enabled=False))
    aligned = make_model(AlignConfig(enabled=True))
    plain_names = {n for n, p in plain.named_parameters() if p.requires_grad}
    extra = {
        n: p for n, p in aligned.named_parameters() if p.requires_grad and n not in plain_names
    }
    assert set(plain_names) <= {n for n, _ in aligned.named_parameters()}
    # Relation, subject and object projection heads: d x d weights and d biases each.
    d = SETTINGS.d_model
    assert sorted(extra) == sorted(
        f"untied_heads.{s}.{w}" for s in STREAMS for w in ("weight", "bias")
    )
    assert sum(p.numel() for p in extra.values()) == 3 * (d * d + d)


def test_attention_masks_hit_every_cross_attention_at_ratio_p():
    p = 0.3
    model = make_model(AlignConfig(enabled=True, mask_ratio=p)).train()
    images, targets = batch()
    model(images, targets)
    blocks = [
        getattr(level, role).cross_attention
        for level in model.generator.levels
        for role in ("predicate", "subject", "object")
    ]
    masks = [block.last_keep_mask for block in blocks]
    assert all(mask is not None for mask in masks)
    dropped = torch.cat([(~mask).flatten().float() for mask in masks])
    assert dropped.mean().item() == pytest.approx(p, abs=0.02)
    # Drawn independently: no two blocks of the same shape got the same mask.
    for i, a in enumerate(masks):
        for b in masks[i + 1 :]:
            assert a.shape != b.shape or not torch.equal(a, b)
    # Self-attention and the supervised branch are never masked.
    assert all(
        level.predicate.self_attention.last_keep_mask is None for level in model.generator.levels
    )


def test_alignment_off_gives_the_plain_models_loss():
    images, targets = batch()
    plain = make_model(AlignConfig(enabled=False), seed=3).train()
    aligned = make_model(AlignConfig(enabled=True), seed=3).train()
    torch.manual_seed(11)
    plain_losses = plain(images, targets)
    torch.manual_seed(11)
    aligned_losses = aligned(images, targets)
    assert set(aligned_losses) - set(plain_losses) == {"loss_align"}
    for name, value in plain_losses.items():
        assert torch.equal(value, aligned_losses[name]), name


def test_sgtr_is_sgdet_only_and_needs_a_detr():
    with pytest.raises(ConfigError, match="sgdet protocol only"):
        ModelConfig(name="sgtr", protocol="predcls")
    statistics = type(
        "S", (), {"object_classes": ["__bg__", "a"], "predicate_classes": ["__bg__", "on"]}
    )
    with pytest.raises(ConfigError, match="needs a trained DETR"):
        build_model(ModelConfig(name="sgtr", protocol="sgdet"), statistics)
