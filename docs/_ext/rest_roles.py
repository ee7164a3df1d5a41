"""A Griffe extension: the packages' reST markup, as mkdocstrings' Markdown.

The docstrings are Google style, written for Sphinx-like tools: cross-references are reST
roles (``:func:`configure```, ``:class:`~atom_async_db.Database```, ``:meth:`title
<target>```) and a paragraph ending in ``::`` introduces an indented literal block. Markdown
renders neither, so before mkdocstrings parses a docstring this extension rewrites it:

- a role is resolved the way Sphinx does, in the scope of the object the docstring belongs
  to (its class, its module, that module's imports), so a relative ``:func:`configure```
  works;
- naming a public object of our packages, it becomes an autorefs link to the path the site
  documents it under (``[`configure()`][atom_async_db.configure]``); mkdocs-autorefs checks
  it, so one that the site does not document fails ``mkdocs build --strict``;
- naming nothing (misspelt, renamed), it becomes such a link to the name as written, which
  autorefs reports: the strict build fails, naming the docstring's file and line;
- naming a private object of ours (``_stats.BOUNDS``), it becomes an optional link: a link
  if the site happens to document the object, else inline code;
- naming another project's object (SQLAlchemy, the standard library), it becomes inline
  code: no inventory of other projects' sites is fetched;
- ``text::`` followed by an indented block becomes ``text:`` and a fenced code block
  (Python when it parses as Python);
- a free-text entry of a ``Raises:`` section (``What :func:`get_db` raises.``) becomes an
  entry with an empty type, which Griffe's Google parser would otherwise drop with a
  warning.

Double-backtick literals need nothing: ````x```` is inline code in Markdown too.

Loaded by mkdocstrings (``mkdocs.yml``: ``handlers.python.options.extensions``).
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

import griffe

OUR_PACKAGES = ("atom_async_db", "sync_compat")

# :role:`target`, :role:`~target`, :role:`title <target>`; roles with a domain
# (:py:func:) too.
ROLE = re.compile(
    r":(?:py:)?(?P<role>func|meth|class|mod|attr|data|exc|obj|const):`(?P<body>[^`]+)`"
)
TITLED = re.compile(r"^(?P<title>.*?)\s*<(?P<target>[^<>]+)>$")
CALLABLE_ROLES = {"func", "meth"}


def _resolve(obj: griffe.Object, target: str, packages: tuple[str, ...]) -> str | None:
    """The full path of ``target`` as seen from ``obj``'s scope.

    None when it names nothing there: a single name that is not in scope (misspelt,
    renamed), or a dotted one that starts in one of ``packages`` but cannot be found
    there. A dotted name that starts elsewhere (``sqlalchemy.engine.URL``) is returned
    as it is.
    """
    target = target.lstrip(".")
    head, _, rest = target.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            resolved = scope.resolve(head)
        except (griffe.NameResolutionError, griffe.AliasResolutionError):
            scope = scope.parent
            continue
        path = f"{resolved}.{rest}" if rest else resolved
        break
    else:
        if not rest:
            return None
        path = target
    if path.split(".")[0] in packages:
        try:
            obj.modules_collection[path]
        except (KeyError, griffe.AliasResolutionError):
            return None
    return path


def _public_path(obj: griffe.Object, path: str) -> str | None:
    """The path under which the site documents ``path`` (None: it does not).

    An object of a private module is documented where its package exports it
    (``atom_async_db._database.Database.dispose`` is ``atom_async_db.Database.dispose``);
    a private object itself is not documented.
    """
    parts = path.split(".")
    private = [
        i for i, part in enumerate(parts) if part.startswith("_") and not part.endswith("__")
    ]
    if not private:
        return path
    last = private[-1]
    if last == len(parts) - 1:
        return None
    try:
        exports = obj.modules_collection[".".join(parts[:last])].exports or []
    except (KeyError, griffe.AliasResolutionError):
        return None
    if parts[last + 1] not in {str(name) for name in exports}:
        return None
    return ".".join(parts[:last] + parts[last + 1 :])


def _link(obj: griffe.Object, match: re.Match[str], packages: tuple[str, ...]) -> str:
    role, body = match["role"], match["body"].strip()
    titled = TITLED.match(body)
    if titled:
        title, target = titled["title"], titled["target"].strip()
    else:
        target = body
        shown = target.lstrip("~.")
        title = shown.rsplit(".", 1)[-1] if target.startswith("~") else shown
        if role in CALLABLE_ROLES and not title.endswith(")"):
            title += "()"
    path = _resolve(obj, target.lstrip("~"), packages)
    if path is None:
        # Names nothing: left to autorefs, which reports it (the strict build fails).
        return f"[``{title}``][{target.lstrip('~')}]"
    if path.split(".")[0] not in packages:
        return f"``{title}``"  # another project's object: shown, not linked
    public = _public_path(obj, path)
    if public is None:
        # One of our private objects (a module constant, a helper class): linked if the
        # site happens to document it, else shown as code; never a broken link.
        return f'<autoref identifier="{path}" optional><code>{title}</code></autoref>'
    return f"[``{title}``][{public}]"


def _literal_blocks(text: str) -> str:
    """A reST ``paragraph::`` + indented block, as ``paragraph:`` + a fenced block."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.rstrip().endswith("::") or line.strip() == "::":
            out.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        k = j
        while k < len(lines) and (
            not lines[k].strip() or len(lines[k]) - len(lines[k].lstrip()) > indent
        ):
            k += 1
        while k > j and not lines[k - 1].strip():
            k -= 1
        if k == j:  # no indented block follows: leave the line alone
            out.append(line)
            i += 1
            continue
        code = textwrap.dedent("\n".join(lines[j:k]))
        try:
            ast.parse(code)
            language = "python"
        except SyntaxError:
            language = "text"
        pad = " " * indent
        out.append(line.rstrip()[:-1])  # "text::" -> "text:"
        out.append("")
        out.append(f"{pad}```{language}")
        out.extend(f"{pad}{code_line}" if code_line else "" for code_line in code.splitlines())
        out.append(f"{pad}```")
        i = k
    return "\n".join(out)


SECTION = re.compile(r"^(?P<indent>\s*)Raises:\s*$")
TYPED_ITEM = re.compile(r"^\s*[A-Za-z_][\w.]*(\[[^\]]*\])?\s*:(\s|$)")


def _free_raises(text: str) -> str:
    """Free-text entries of a Raises section as entries with an empty type.

    The house style names each exception a function raises itself (``ConfigurationError:
    ...``) and says in words what it lets through (``What :func:`get_db` raises.``).
    Griffe's Google parser wants ``Type: description`` and would drop the words with a
    warning; as ``: What ... raises.`` they keep their row, with an empty type.
    """
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        header = SECTION.match(lines[i])
        out.append(lines[i])
        i += 1
        if not header:
            continue
        base = len(header["indent"])
        item_indent: int | None = None
        free = False
        while i < len(lines):
            line = lines[i]
            indent = len(line) - len(line.lstrip())
            if line.strip() and indent <= base:
                break  # the section ended
            if item_indent is None and line.strip():
                item_indent = indent
            if line.strip() and indent == item_indent:
                if TYPED_ITEM.match(line):
                    free = False
                elif free:  # a free-text entry's next line: a continuation
                    line = "    " + line
                else:
                    free = True
                    line = f"{line[:indent]}: {line[indent:]}"
            out.append(line)
            i += 1
    return "\n".join(out)


def convert(obj: griffe.Object, text: str, packages: tuple[str, ...] = OUR_PACKAGES) -> str:
    """``text`` (a docstring of ``obj``) with its reST markup turned into Markdown;
    ``packages``: those whose objects are linked (and must be found).
    """
    text = _free_raises(_literal_blocks(text))
    return ROLE.sub(lambda match: _link(obj, match, packages), text)


class RestRoles(griffe.Extension):
    """Rewrites each docstring once the package is loaded (see the module docstring).

    Args:
        packages: the packages whose objects roles link to (default: ours).
    """

    def __init__(self, packages: list[str] | tuple[str, ...] = OUR_PACKAGES) -> None:
        super().__init__()
        self.packages = tuple(packages)

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring (the hook Griffe calls once the tree is complete)."""
        if obj.is_alias or obj.docstring is None or obj.extra["rest_roles"].get("done"):
            return
        obj.extra["rest_roles"]["done"] = True  # (rewritten once)
        obj.docstring.value = convert(obj, obj.docstring.value, self.packages)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrite the package's own docstring, for which Griffe calls no ``on_object``."""
        self.on_object(obj=pkg)
