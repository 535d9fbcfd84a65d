"""panoptic_ext.evaluation (filled in by its owner)."""
