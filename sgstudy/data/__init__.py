"""sgstudy.data: VG150-format scene-graph datasets (synthetic and real).

Modules:
- ``vg_format``: read, validate and write the VG150 files;
- ``dataset``: ``SceneGraphDataset`` (train / val / test) and ``collate_scene_graphs``;
- ``statistics``: ``compute_statistics`` -> ``DatasetStatistics`` (frequency counts, seen
  triplets, head/body/tail groups, file fingerprint);
- ``check``: ``check_dataset``, validation plus a human summary;
- ``synthetic`` (with ``synthetic_scene`` and ``synthetic_rules``):
  ``generate_synthetic_dataset`` writes a learnable, long-tailed synthetic dataset in the
  same format;
- ``predicate_groups``: the head/body/tail partitions;
- ``referring_format``, ``referring``, ``referring_check``, ``referring_synth``: the public
  referring-relationship format (CLEVR / VRD / Visual Genome splits of Krishna et al.), its
  ``ReferringDataset`` (one item per image and query) and statistics, its checker, and
  ``derive_referring_dataset`` (``sgstudy data synth-rr``) from a VG150-format dataset.

Using the public VG150 release (the split of Xu et al., CVPR 2017, as distributed by
Neural Motifs and Scene-Graph-Benchmark.pytorch): put these under one root folder::

    <root>/VG-SGG-with-attri.h5           boxes, labels, relations, split
    <root>/VG-SGG-dicts-with-attri.json   class and predicate names
    <root>/image_data.json                image ids and sizes, in h5 order
    <root>/VG_100K/<image_id>.jpg         all images in one folder (the release ships
                                          VG_100K and VG_100K_2; merge them, or name
                                          another folder with ``image_dir``)

Then ``SceneGraphDataset(root, "train")`` reads it (5,000 val images by default) and
``check_dataset(root)`` validates it. Nothing is downloaded. The four images that
image_data.json lists but the h5 leaves out (ids 1592, 1722, 4616, 4617, corrupt in the
release) are skipped; the predicate head/body/tail groups are BGNN's (SPEC §1).
"""
