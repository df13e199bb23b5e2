"""Readers for dataset layouts, all on the same S2/S1/handle stack (``s2``, ``s1``, ``handles``):

- ``scene_folder``: the generic layout (any S2 L2A products + S1 files under a root), scanned for
  ``dataset.SceneFolderDataset``;
- ``bigearthnet``: BigEarthNet v2 (reBEN) patch folders + ``metadata.parquet``;
- ``sen12ms``: SEN12MS ROI folders;
- ``common``: split names, the unknown-label value, the grid of a patch file.
"""
