"""Operator-written Jinja2 templates (top-up descriptions, notification texts).

Rendered in Jinja2's sandbox: a template can read the values it is given but
cannot reach Python internals (``{{ ''.__class__ }}`` raises SecurityError).
"""

from __future__ import annotations

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def render(template: str, **values) -> str:
    """Render ``template``; raises ValueError with the template's fault on error."""
    try:
        return _ENV.from_string(template).render(**values)
    except TemplateError as error:
        raise ValueError(f"template {template!r}: {error}") from None


def check(template: str) -> None:
    """Raise ValueError if ``template`` does not parse."""
    try:
        _ENV.parse(template)
    except TemplateError as error:
        raise ValueError(f"template {template!r}: {error}") from None
