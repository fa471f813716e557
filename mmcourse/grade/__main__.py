"""`python -m mmcourse.grade`: see `mmcourse.grade.cli`."""
import sys

from mmcourse.grade.cli import main

sys.exit(main())
