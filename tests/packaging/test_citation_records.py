"""Issue 23: CITATION.cff cites the software itself with its version (common/version.py's) and release date beside
the paper it prefers; the README's BibTeX entry for the software says the same, and the README says which of the
paper's figures frd-paper reproduces."""
import datetime
import os
import re

import pytest

yaml = pytest.importorskip("yaml")  # PyYAML: installed with the docs extra (mkdocs), and by most environments

from common import __version__
from tests.helpers import ROOT


def _read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def test_citation_has_version_and_release_date():
    cff = yaml.safe_load(_read("CITATION.cff"))
    assert cff["type"] == "software" and str(cff["version"]) == __version__
    released = cff["date-released"]
    released = released if isinstance(released, datetime.date) else datetime.date.fromisoformat(released)
    assert datetime.date(2026, 1, 1) <= released <= datetime.date.today()
    assert cff["preferred-citation"]["year"] == 2025 and "Nichani" in str(cff["preferred-citation"]["authors"])


def test_readme_software_entry_agrees_with_the_citation_file():
    readme = _read("README.md")
    entry = readme[readme.index("@software{"):]
    entry = entry[:entry.index("\n}")]
    cff = yaml.safe_load(_read("CITATION.cff"))
    assert re.search(r"version\s*=\s*\{([^}]*)\}", entry).group(1) == __version__
    assert re.search(r"date\s*=\s*\{([^}]*)\}", entry).group(1) == str(cff["date-released"])


def test_readme_says_which_figure_frd_paper_reproduces():
    row = next(line for line in _read("README.md").splitlines() if line.startswith("| `frd-paper`"))
    assert "Section 5" in row and "sequential-learning figure" in row
