"""The generated API reference (docs/api.md) matches the code, and the user guide's links resolve."""
from __future__ import annotations

import re
import sys

from helpers import ROOT

sys.path.insert(0, str(ROOT / "tools"))


def test_api_reference_is_up_to_date():
    import gen_api_docs

    assert (ROOT / "docs" / "api.md").read_text() == gen_api_docs.render(), \
        "docs/api.md is stale: run python tools/gen_api_docs.py"


def test_doc_links_resolve():
    for page in ["README.md", *(p.relative_to(ROOT) for p in (ROOT / "docs").glob("*.md"))]:
        text = (ROOT / page).read_text()
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (ROOT / page).parent.joinpath(target).exists(), f"{page}: broken link {target}"
