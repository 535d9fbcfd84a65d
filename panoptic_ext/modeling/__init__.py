"""panoptic_ext.modeling (filled in by its owner)."""
