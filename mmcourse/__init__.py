"""mmcourse."""
