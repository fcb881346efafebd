"""Email bodies from Jinja2 templates: the shipped ones, or a vendor's folder first.

Each kind of message has three templates: `KIND.subject.j2`, `KIND.txt.j2`
and `KIND.html.j2`. HTML is autoescaped; the plain text and subject are not
(they are not markup), but line breaks are stripped from the subject.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    select_autoescape,
)

from keyturn.server.domain.messages import MessageKind


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    text: str
    html: str


class MailRenderer:
    def __init__(self, template_folder: Path | None = None) -> None:
        loaders: list[Any] = []
        if template_folder is not None:
            if not template_folder.is_dir():
                raise FileNotFoundError(f"KEYTURN_MAIL_TEMPLATES: no folder {template_folder}")
            loaders.append(FileSystemLoader(template_folder))
        loaders.append(PackageLoader("keyturn.server.dispatch", "templates"))
        self._env = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
            undefined=StrictUndefined,  # a template naming a missing value fails loudly
            keep_trailing_newline=True,
        )
        if template_folder is not None:
            # Compiled now, so that a template that does not parse stops the start,
            # not the first email that needs it.
            for template in sorted(template_folder.glob("*.j2")):
                self._env.get_template(template.name)

    def render(self, kind: MessageKind, values: dict[str, Any]) -> RenderedMail:
        name = kind.value
        subject = self._env.get_template(f"{name}.subject.j2").render(values)
        return RenderedMail(
            subject=" ".join(subject.split()),
            text=self._env.get_template(f"{name}.txt.j2").render(values),
            html=self._env.get_template(f"{name}.html.j2").render(values),
        )
