"""What a chapter page needs beyond the mathematics: numbers in the prose that come from the code.

A sentence such as "the error falls by a factor of 4.1 per halving of the step" must quote the
number the cell printed, at the budget the page was built with. `glue("ratio", value)` hands the
value to MyST-NB, and the markdown writes {glue:text}`ratio:.1f`. Outside a book build (a plain
Jupyter session, Colab without myst-nb) it does nothing, and the printed output shows the number.
"""
from __future__ import annotations

__all__ = ["glue"]


def glue(name: str, value, display: bool = False):
    """Make `value` available to the page's prose as {glue:text}`name` (or {glue:text}`name:.3f`);
    returns value, so ``x = glue("x", compute())`` reads naturally."""
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"glue name must be letters, digits, '_' or '-'; got {name!r}")
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()  # a one-element tensor or numpy scalar: glue the number itself
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # not building the book: nothing to hand over
        return value
    myst_glue(name, value, display=display)
    return value
