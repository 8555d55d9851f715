"""sgstudy.evaluation: Scene-Graph-Benchmark metrics."""
