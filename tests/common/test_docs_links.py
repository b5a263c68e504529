"""Every document the repository cites is in the repository.

A file (README, docs, code comments, tests, packaging) that names a ``*.md`` document, or links to
one in Markdown, names one that exists: at that path from the repository's root, beside the file,
under docs/, or as the tail of a tracked path (``topologies/README.md``). The normative formats,
the architecture and the threat model are among them and linked from the README. Absolute paths
(the unit's ``Documentation=file:///opt/...``: installed files, checked by tests/lab/test_wheel.py)
are not this test's.
"""
import os
import re
import subprocess

from conftest import REPO

# text files whose words may cite a document (data, captures and lock files left out)
SKIP = re.compile(r"(^|/)(node_modules|benchmarks/results|tests/data/pcaps)/|"
                  r"\.(json|pcap|pcapng|bin|png|svg|lock|whl|so)$|package-lock")
CITE = re.compile(r"(?<![\w/.:-])((?:\.\.?/)*[A-Za-z0-9_][A-Za-z0-9_./-]*\.md)\b")
LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")
THIS = "tests/common/test_docs_links.py"
REQUIRED = ("docs/formats.md", "docs/architecture.md", "docs/threat-model.md")


def tracked():
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    return [p for p in out if p and not SKIP.search(p) and os.path.isfile(os.path.join(REPO, p))]


def citations(text):
    return set(CITE.findall(text)) | set(LINK.findall(text))


def resolves(ref, where, files):
    if ref.startswith("/"):
        return True
    here = os.path.dirname(where)
    for cand in (ref, os.path.join(here, ref), os.path.join("docs", ref)):
        if os.path.normpath(cand) in files:
            return True
    return any(f.endswith("/" + ref) for f in files)


def test_the_pattern_finds_citations():
    """The test could fail: a citation of a missing file is found, in the ways files cite."""
    files = {"docs/formats.md", "README.md", "beat_lab/topologies/README.md"}
    text = ('see `SPEC.md` and [the formats](docs/formats.md), ARCHITECTURE.md "Parts"; '
            "../shared/LIMITS.md, topologies/README.md, file:///opt/x/y.md")
    got = citations(text)
    bad = sorted(r for r in got if not resolves(r, "docs/x.md", files))
    assert bad == ["../shared/LIMITS.md", "ARCHITECTURE.md", "SPEC.md"], got


def test_every_cited_document_is_in_the_repository():
    paths = tracked()
    files = {os.path.normpath(p) for p in paths}
    missing = []
    for p in paths:
        if p == THIS:               # its own examples of citations that do not resolve
            continue
        try:
            with open(os.path.join(REPO, p), encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            continue
        for ref in sorted(citations(text)):
            if not resolves(ref, p, files):
                missing.append(f"{p}: cites {ref}, which is not in the repository")
    assert not missing, "\n".join(missing)


def test_the_documents_are_there_and_linked_from_the_readme():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for doc in REQUIRED:
        assert os.path.isfile(os.path.join(REPO, doc)), doc
        assert f"]({doc})" in readme, f"README.md does not link {doc}"
