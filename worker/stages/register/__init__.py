"""Register stage: the transform from follow-up (fixed) space to planning CT (moving) space."""
