"""sgstudy.data: VG150-format scene-graph datasets (synthetic and real)."""
