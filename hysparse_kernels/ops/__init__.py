"""Op families (one folder each): attention, and those that stand beside it."""
