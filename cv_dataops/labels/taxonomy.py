"""The taxonomy: the set of classes a label may take, with optional aliases, as configuration.

Matching rules (the same for classes and aliases): surrounding whitespace is ignored, runs of inner whitespace
count as one space, and case is ignored (``casefold``), so ``" Traffic  Light"`` finds ``traffic light``. The label
returned is always the class as configured. Two classes that match each other under these rules are a duplicate;
an alias must name a configured class and must not itself match a class.

An **open** taxonomy (no classes configured) accepts every non-empty label as written, only with its whitespace
tidied as above (case kept: ``Cat`` and ``cat`` are two labels), so labels from landing folders keep working
without configuration; aliases still apply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cv_dataops.core.versioning import settings_digest

_WHITESPACE = re.compile(r"\s+")


class TaxonomyError(ValueError):
    """The taxonomy configuration cannot be used; the message is one line naming the cause."""


def _key(text: str) -> str:
    return _WHITESPACE.sub(" ", text.strip()).casefold()


@dataclass(frozen=True)
class Taxonomy:
    """Classes (empty: open) and aliases (alias -> class). Build it with :meth:`from_config`."""

    classes: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        by_key: dict[str, str] = {}
        for name in self.classes:
            if not isinstance(name, str) or not name.strip():
                raise TaxonomyError(f"taxonomy: a class must be a non-empty string, not {name!r}")
            if _key(name) in by_key:
                raise TaxonomyError(f"taxonomy: duplicate class {name!r} (same as {by_key[_key(name)]!r} "
                                    f"ignoring case and spaces)")
            by_key[_key(name)] = name
        resolved: dict[str, str] = {}
        for alias, target in self.aliases.items():
            if not isinstance(alias, str) or not alias.strip() or not isinstance(target, str) or not target.strip():
                raise TaxonomyError(f"taxonomy: alias {alias!r} -> {target!r}: both must be non-empty strings")
            if _key(alias) in by_key:
                raise TaxonomyError(f"taxonomy: alias {alias!r} is also a class")
            if self.classes and _key(target) not in by_key:
                raise TaxonomyError(f"taxonomy: alias {alias!r} points to {target!r}, which is not a class "
                                    f"(classes: {', '.join(self.classes)})")
            canonical = by_key.get(_key(target), _WHITESPACE.sub(" ", target.strip()))
            if resolved.get(_key(alias), canonical) != canonical:
                raise TaxonomyError(f"taxonomy: alias {alias!r} is given twice, for {resolved[_key(alias)]!r} "
                                    f"and {canonical!r}")
            resolved[_key(alias)] = canonical
        object.__setattr__(self, "_classes", by_key)
        object.__setattr__(self, "_aliases", resolved)

    @classmethod
    def from_config(cls, config: Mapping | Iterable[str] | None) -> Taxonomy:
        """From ``{"classes": [...], "aliases": {"automobile": "car"}}``, a plain list of classes, or None (open)."""
        if config is None:
            return cls()
        if isinstance(config, str):
            raise TaxonomyError("taxonomy: give a list of classes or {'classes': [...], 'aliases': {...}}, "
                                "not a string")
        if isinstance(config, Mapping):
            unknown = sorted(set(config) - {"classes", "aliases"})
            if unknown:
                raise TaxonomyError(f"taxonomy: unknown key(s) {unknown}; expected 'classes' and 'aliases'")
            classes = config.get("classes") or ()
            aliases = config.get("aliases") or {}
            if isinstance(classes, str) or not isinstance(classes, Iterable):
                raise TaxonomyError(f"taxonomy: 'classes' must be a list, not {type(classes).__name__}")
            if not isinstance(aliases, Mapping):
                raise TaxonomyError(f"taxonomy: 'aliases' must be a mapping alias -> class, not "
                                    f"{type(aliases).__name__}")
            return cls(tuple(classes), dict(aliases))
        return cls(tuple(config))

    @property
    def is_open(self) -> bool:
        return not self.classes

    @property
    def version(self) -> str:
        """A short digest of the configuration: changes whenever the classes or aliases do."""
        return settings_digest({"classes": list(self.classes), "aliases": dict(self.aliases)})

    def resolve(self, text: object) -> str | None:
        """The class ``text`` names (directly or through an alias), or None when it names none."""
        if not isinstance(text, str) or not text.strip():
            return None
        key = _key(text)
        if key in self._aliases:
            return self._aliases[key]
        if self.is_open:
            return _WHITESPACE.sub(" ", text.strip())
        return self._classes.get(key)

    def __contains__(self, label: object) -> bool:
        """Whether ``label`` is a class as spelled here (an alias or another spelling is not)."""
        if not isinstance(label, str):
            return False
        return self.resolve(label) == label if self.is_open else label in self._classes.values()

    def describe_unknown(self, text: str) -> str:
        """One line for a label the taxonomy does not know."""
        if self.is_open:
            return f"not a label: {text!r}"  # an open taxonomy refuses only empty labels
        shown = ", ".join(self.classes[:20]) + (", ..." if len(self.classes) > 20 else "")
        return f"unknown class {text!r} (classes: {shown})"
