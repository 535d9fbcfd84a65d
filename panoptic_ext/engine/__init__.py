"""panoptic_ext.engine (filled in by its owner)."""
