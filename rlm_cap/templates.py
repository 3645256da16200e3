"""Operator-written Jinja2 templates (top-up descriptions, notification texts).

Rendered in Jinja2's sandbox: a template can read the values it is given but
cannot reach Python internals (``{{ ''.__class__ }}`` raises SecurityError).
"""

from __future__ import annotations

from jinja2 import ChainableUndefined, StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, refusing an unsafe access at once.

    Jinja2's own sandbox hands back an undefined value that raises only when it is
    printed; ``{% if ''.__class__ is defined %}`` or a lenient undefined (below)
    would pass it by quietly.
    """

    def unsafe_undefined(self, obj, attribute):
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe.")


_ENV = _Sandbox(undefined=StrictUndefined, autoescape=False)
# For trying a template on sample values: only what the sandbox forbids is an error there.
_LENIENT = _Sandbox(undefined=ChainableUndefined, autoescape=False)


def render(template: str, **values) -> str:
    """Render ``template``; raises ValueError with the template's fault on error."""
    try:
        return _ENV.from_string(template).render(**values)
    except TemplateError as error:
        raise ValueError(f"template {template!r}: {error}") from None


def check(template: str, **sample) -> None:
    """Raise ValueError if ``template`` does not parse, or, tried on ``sample`` values,
    reaches for something the sandbox forbids (``__class__``, ``_private`` attributes ...).

    Names missing from ``sample`` are no error here: only a parse error or an unsafe access is.
    """
    try:
        _ENV.parse(template)
    except TemplateError as error:
        raise ValueError(f"template {template!r}: {error}") from None
    if not sample:
        return
    try:
        _LENIENT.from_string(template).render(**sample)
    except SecurityError as error:
        raise ValueError(f"template {template!r}: {error}") from None
    except Exception:  # noqa: BLE001 - sample values may not suit every filter: only the sandbox's refusal counts
        pass
