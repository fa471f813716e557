"""Classroom tools, apart from the library a learner imports: exercise checks (`checks`), the
generator of exercises from solutions (`exercises`), the grader (`grade`), executing notebooks
(`notebooks`) and the lesson runner (`course`). Nothing outside this package imports it.
"""
