"""MkDocs hooks of the documentation site (``mkdocs.yml``: ``hooks``).

Three jobs:

- The benchmarks' charts (``benchmarks/results/<run>/chart.png``, written by
  ``python -m benchmarks --out ...`` with matplotlib) live next to their results, outside
  ``docs/``. Rather than keeping copies, the build adds each one to the site as
  ``benchmarks/charts/<run>.png``, where ``docs/benchmarks.md`` shows it; a chart the page
  names that is gone is then a missing image, which the strict build reports.
- The Changelog page includes ``CHANGELOG.md`` from the repository root (a snippet,
  ``--8<-- "CHANGELOG.md"``, which fails the build when its file is missing). Until that
  file exists the page says so instead, and the build logs it at INFO: set
  ``MISSING_CHANGELOG_FAILS`` to make a missing ``CHANGELOG.md`` fail the strict build.
- Files written for GitHub (``benchmarks/README.md``, included whole) start lists right
  after a paragraph or a table, which GitHub renders as a list and Python-Markdown as text.
  A preprocessor that runs after the snippets are included puts a blank line there.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.hooks.atom_async_db")

ROOT = Path(__file__).resolve().parents[2]
CHARTS = "benchmarks/results/*/chart.png"
CHANGELOG = ROOT / "CHANGELOG.md"
MISSING_CHANGELOG_FAILS = True

# A list item that may interrupt a paragraph on GitHub: a bullet, or an ordered list from 1.
LIST_ITEM = re.compile(r"^(?:[-*+]|1[.)]) ")
FENCE = re.compile(r"^\s*(?:`{3,}|~{3,})")


class _ListsAfterParagraphs(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        fenced = False
        for line in lines:
            if FENCE.match(line):
                fenced = not fenced
            elif (
                not fenced
                and LIST_ITEM.match(line)
                and out
                and out[-1].strip()
                and not out[-1].startswith((" ", "\t"))
                and not LIST_ITEM.match(out[-1])
            ):
                out.append("")
            out.append(line)
        return out


class ListsAfterParagraphs(Extension):
    """Markdown extension: a blank line before a list that follows a paragraph or table."""

    def extendMarkdown(self, md: Markdown) -> None:
        """Register the preprocessor after pymdownx.snippets (priority 32)."""
        md.preprocessors.register(_ListsAfterParagraphs(md), "lists_after_paragraphs", 31)


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Add the list extension to the site's Markdown extensions."""
    config.markdown_extensions.append(ListsAfterParagraphs())
    return config


def on_files(files: Files, *, config: Any) -> Files:
    """Add the benchmarks' charts to the site."""
    for chart in sorted(ROOT.glob(CHARTS)):
        uri = f"benchmarks/charts/{chart.parent.name}.png"
        files.append(File.generated(config, uri, abs_src_path=str(chart)))
    return files


def on_page_markdown(markdown: str, *, page: Page, **kwargs: Any) -> str:
    """The Changelog page, while ``CHANGELOG.md`` does not exist yet."""
    if page.file.src_uri != "changelog.md" or CHANGELOG.exists():
        return markdown
    message = "CHANGELOG.md does not exist: the Changelog page says so instead of including it"
    log.log(logging.WARNING if MISSING_CHANGELOG_FAILS else logging.INFO, message)
    return "# Changelog\n\nThe changelog (`CHANGELOG.md`) is not written yet.\n"
