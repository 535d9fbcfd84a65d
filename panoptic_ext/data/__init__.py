"""panoptic_ext.data (filled in by its owner)."""
