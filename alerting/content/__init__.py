"""The text library: member nudges (nudges.yaml) and page / notification texts (paging.yaml).

Texts live in these YAML files, never in code, so they can be reviewed (clinical ones by a
CDCES) and translated without a code change. `load_content()` reads and checks every file: each
situation has a kind, English texts, and uses only the `$variables` it declares; a broken file
stops the scheduler at start (ContentError), rather than sending a broken text at 3 a.m.
Rendering uses `string.Template` (`$name`), which cannot reach attributes or call anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any, Final

import yaml

from alerting.errors import ContentError

DEFAULT_LANGUAGE: Final = "en"
_FILES: Final = ("nudges.yaml", "paging.yaml")
_VARIANTS: Final = frozenset({"now", "deferred"})


@dataclass(frozen=True, slots=True)
class Situation:
    name: str
    kind: str
    source: str
    variables: frozenset[str]
    #: language -> variant ("now", optionally "deferred") -> template text
    texts: dict[str, dict[str, str]]

    def render(
        self, language: str, values: dict[str, object], *, deferred: bool = False
    ) -> tuple[str, str]:
        """(language used, text). Falls back to English, and to "now" without a "deferred"."""
        lang = language if language in self.texts else DEFAULT_LANGUAGE
        variants = self.texts[lang]
        text = variants["deferred"] if deferred and "deferred" in variants else variants["now"]
        missing = self.variables - values.keys()
        if missing:
            raise ContentError(self.name, "variables", f"missing values for {sorted(missing)}")
        return lang, Template(text).substitute({k: str(v) for k, v in values.items()})


@dataclass(frozen=True, slots=True)
class Content:
    situations: dict[str, Situation]

    def __getitem__(self, name: str) -> Situation:
        return self.situations[name]


def load_content() -> Content:
    folder = resources.files("alerting.content")
    situations: dict[str, Situation] = {}
    for filename in _FILES:
        try:
            doc = yaml.safe_load(folder.joinpath(filename).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ContentError(filename, "", f"cannot be read: {exc}") from exc
        situations.update(parse_content(filename, doc, known=situations.keys()))
    return Content(situations)


def parse_content(
    source: str, doc: Any, known: Any = frozenset()
) -> dict[str, Situation]:  # fmt: skip
    if not isinstance(doc, dict):
        raise ContentError(source, "", "must be a mapping of situations")
    out: dict[str, Situation] = {}
    for name, entry in doc.items():
        if name in known:
            raise ContentError(source, str(name), "defined in two files")
        out[str(name)] = _situation(source, str(name), entry)
    return out


def _situation(source: str, name: str, entry: Any) -> Situation:
    if not isinstance(entry, dict):
        raise ContentError(source, name, "must be a mapping")
    kind, texts, variables = entry.get("kind"), entry.get("texts"), entry.get("variables", [])
    if not isinstance(kind, str) or not kind:
        raise ContentError(source, f"{name}.kind", "required")
    if not isinstance(variables, list) or not all(isinstance(v, str) for v in variables):
        raise ContentError(source, f"{name}.variables", "must be a list of names")
    if not isinstance(texts, dict) or DEFAULT_LANGUAGE not in texts:
        raise ContentError(source, f"{name}.texts", f"needs at least '{DEFAULT_LANGUAGE}'")
    declared = frozenset(variables)
    parsed: dict[str, dict[str, str]] = {}
    for lang, variants in texts.items():
        path = f"{name}.texts.{lang}"
        if not isinstance(variants, dict) or "now" not in variants:
            raise ContentError(source, path, "needs a 'now' text")
        for variant, text in variants.items():
            if variant not in _VARIANTS or not isinstance(text, str) or not text.strip():
                raise ContentError(source, f"{path}.{variant}", "must be 'now' or 'deferred' text")
            template = Template(text)
            if not template.is_valid():
                raise ContentError(source, f"{path}.{variant}", "has a malformed $placeholder")
            undeclared = set(template.get_identifiers()) - declared
            if undeclared:
                raise ContentError(source, f"{path}.{variant}",
                                   f"uses undeclared variables {sorted(undeclared)}")  # fmt: skip
        parsed[str(lang)] = {str(k): str(v).strip() for k, v in variants.items()}
    return Situation(name, kind, str(entry.get("source", "")).strip(), declared, parsed)
