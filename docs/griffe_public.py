"""A griffe extension for the API reference (mkdocs.yml: mkdocstrings' `extensions`): a
module-level name without a docstring that the module does not export in `__all__` is left out
of the pages and their contents.

Those are the modules' type aliases and helpers of their own (`Array = jax.Array`, `Shape`,
`Initializer`, `HE_NORMAL`, `Params`, ...): they are spelled out in the signatures where they are
used, and listing them as members made every module's contents start with the same aliases.
Functions, classes and their members are kept, documented or not; a constant that should be in
the reference gets a docstring (a string right below the assignment) or a place in `__all__`.
"""

from __future__ import annotations

from typing import Any

import griffe


class HideUndocumentedModuleAttributes(griffe.Extension):
    """Mark undocumented, unexported module attributes private (`public = False`)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._hide(pkg)

    def _hide(self, module: griffe.Module) -> None:
        exports = {str(name) for name in module.exports or ()}
        for name, member in module.members.items():
            if member.is_alias:
                continue
            if member.is_module:
                self._hide(member)
            elif member.is_attribute and member.docstring is None and name not in exports:
                member.public = False
