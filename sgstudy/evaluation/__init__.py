"""sgstudy.evaluation: Scene-Graph-Benchmark metrics.

``sgg_eval``: R@K, mR@K, zR@K with and without graph constraint, per-predicate recall,
the ``reference_compatible`` switch, and the per-predicate artifact the reports read;
``batched``: ranking and matching of many images at once in torch (the default path);
``triplet_match``: the per-image ranking and matching in numpy; ``pooled``: the per-image
sums both paths produce; ``referring_eval``: DSG's ``iou_test`` for referring relationships
(subject / object IoU on a 14 x 14 grid).
"""
