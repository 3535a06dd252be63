"""The one error for bad input: which field, and what is wrong with it (for a precise 4xx)."""

from __future__ import annotations


class InputError(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message
