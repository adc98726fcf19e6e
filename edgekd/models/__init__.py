"""Model registries: multimodal teachers and small, exportable single-modality students.

    from edgekd.models import create_student, create_teacher, list_students, list_teachers
    student = create_student("tcn_tiny", spec, num_classes=12, width=24)
    again = create_student(student.arch, spec, **student.arch_args)   # exact rebuild

Importing this package registers the built-in architectures (it imports torch).
"""

from edgekd.models.registry import (
    create_student,
    create_teacher,
    list_students,
    list_teachers,
    register_student,
    register_teacher,
    teacher_constructor,
)
from edgekd.models.taps import FeatureTap

# Imported for their side effect: the @register_* decorators fill the registries.
from edgekd.models import students as _students  # noqa: E402,F401  isort: skip
from edgekd.models import teachers as _teachers  # noqa: E402,F401  isort: skip

__all__ = [
    "FeatureTap",
    "create_student",
    "create_teacher",
    "list_students",
    "list_teachers",
    "register_student",
    "register_teacher",
    "teacher_constructor",
]
