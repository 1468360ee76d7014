"""Class lists, ``--classes`` files and the true label from a clip's name.

The functions live in :mod:`models.class_lists` (beside the class files they read, so that
``models/`` needs nothing from ``utils/``); this module is where the pipeline and users import
them from.
"""
from models.class_lists import (Synonyms, check_class_count, epic_class_names,  # noqa: F401
                                epic_classes, parse_label, read_class_file, resolve_class)
