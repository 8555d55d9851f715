"""sgstudy.evaluation: Scene-Graph-Benchmark metrics.

``sgg_eval``: R@K, mR@K, zR@K with and without graph constraint, per-predicate recall,
and the per-predicate artifact the reports read; ``triplet_match``: the per-image
ranking and matching it is built on.
"""
