"""Constrained answers: a JSON schema every engine decodes to, and the check of what came back.

``Constraint`` is built once at the edge and carried on ``GenerationOptions.constraint``;
``medgem.structured.builtin`` holds the schemas of MedGemma's own structured tasks and ``as_constraint``, what
``schema=`` accepts (imported where used: building the schemas costs a compile each).
"""

from medgem.errors import SchemaError, StructuredOutputError
from medgem.structured.constraint import Checked, Constraint, check_schema

__all__ = ["Checked", "Constraint", "SchemaError", "StructuredOutputError", "check_schema"]
