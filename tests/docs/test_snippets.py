"""Every Python, TypeScript and Go snippet of the SDK READMEs and the orchestrator quickstart is
taken from a program in examples/ (which `make test` installs, type-checks and runs), so no
snippet can rot: a block must appear in one of the examples of its language, line for line
(indentation aside, so an excerpt may be dedented)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [
    "clients/python/README.md",
    "clients/typescript/README.md",
    "clients/go/README.md",
    "docs/orchestrators.md",
]
LANGUAGES = {"python": ("python", "*.py"), "ts": ("typescript", "*.ts"), "go": ("go", "*.go")}
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _snippets() -> list[tuple[str, int, str, str]]:
    found = []
    for document in DOCUMENTS:
        text = (ROOT / document).read_text()
        for match in FENCE.finditer(text):
            if match.group(1) in LANGUAGES:
                line = text.count("\n", 0, match.start()) + 1
                found.append((document, line, match.group(1), match.group(2)))
    return found


def _contains(haystack: list[str], needle: list[str]) -> bool:
    return any(haystack[i : i + len(needle)] == needle for i in range(len(haystack)))


@pytest.mark.parametrize(
    ("document", "line", "language", "snippet"),
    _snippets(),
    ids=[f"{document}:{line}" for document, line, _, _ in _snippets()],
)
def test_snippet_comes_from_an_example(
    document: str, line: int, language: str, snippet: str
) -> None:
    directory, pattern = LANGUAGES[language]
    programs = sorted((ROOT / "examples" / directory).glob(pattern))
    assert programs, f"no examples/{directory}/{pattern}"
    wanted = _lines(snippet)
    assert any(_contains(_lines(program.read_text()), wanted) for program in programs), (
        f"{document}:{line}: this {language} snippet is not in examples/{directory}; take it "
        "from the example program (or change the program and copy the snippet again)"
    )


def test_every_document_has_snippets() -> None:
    documents = {document for document, _, _, _ in _snippets()}
    assert documents == set(DOCUMENTS)
