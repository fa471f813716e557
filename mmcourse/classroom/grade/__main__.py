"""`python -m mmcourse.classroom.grade`: see `mmcourse.classroom.grade.cli`."""
import sys

from mmcourse.classroom.grade.cli import main

sys.exit(main())
