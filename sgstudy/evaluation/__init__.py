"""sgstudy.evaluation: Scene-Graph-Benchmark metrics.

``sgg_eval``: R@K, mR@K, zR@K with and without graph constraint, per-predicate recall,
and the per-predicate artifact the reports read; ``triplet_match``: the per-image
ranking and matching it is built on; ``referring_eval``: DSG's ``iou_test`` for referring
relationships (subject / object IoU on a 14 x 14 grid).
"""
