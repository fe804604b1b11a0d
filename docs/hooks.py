"""MkDocs hooks: pages made at build time from files that live outside the markdown sources.

* Every tutorial `docs/tutorials/NN_name.py` (jupytext percent format) becomes the page
  `tutorials/NN_name.md`: markdown cells as prose, code cells as ```python blocks, followed by
  the outputs of the notebook `NN_name.ipynb` beside it when that notebook was made from the same
  source (a cell whose source differs shows no output). The tutorials are listed under
  "Tutorials" in the nav, after their index: `docs/tutorials/index.md`, else
  `docs/tutorials/README.md` as `tutorials/index.md`, else a list made here (so the site builds
  before any tutorial exists). Links to `NN_name.py` from the tutorial pages go to the rendered
  page; the `.py` and `.ipynb` files are also copied as they are, for download.
* `experiments/PERFORMANCE.md` (the performance log) and the figures in `experiments/figures`
  are added at the same paths inside the site, so a page links to them as
  `experiments/PERFORMANCE.md` and `experiments/figures/NAME.png`.

* Text between `<!-- KEY -->` and `<!-- /KEY -->` in a page is generated (`fill_generated`), so
  a list written in several places has one source: `jaxcnn.__all__` (the names the package root
  re-exports, read from jaxcnn/__init__.py) and `modules:api/PAGE.md` (the modules an API page
  renders, from its `::: module` lines, in order). The pages hold the generated text too, so
  they read right on GitHub; `python docs/hooks.py` rewrites them after a change, and
  tests/test_docs_consistency.py fails while one is out of date.

Nothing here fetches anything: the build is offline.
"""

from __future__ import annotations

import ast
import base64
import re
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "docs" / "tutorials"
MIRRORED = ("experiments/PERFORMANCE.md", "experiments/figures/*.png")  # repo path = site path
NAV_TITLE = "Tutorials"
HIDDEN_TAGS = {"remove_cell", "remove-cell", "hide-cell"}  # cells left off the page
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TUTORIAL = re.compile(r"^\d\d_[\w-]+$")


def tutorial_sources() -> list[Path]:
    """docs/tutorials/NN_name.py, in order."""
    if not TUTORIALS.is_dir():
        return []
    return sorted(p for p in TUTORIALS.glob("*.py") if TUTORIAL.match(p.stem))


@cache
def _notebook(path: Path, mtime: float):
    import jupytext

    return jupytext.read(path)


def notebook(path: Path):
    """The notebook jupytext reads from `path` (cached while the file is unchanged)."""
    return _notebook(path, path.stat().st_mtime)


def title(path: Path) -> str:
    """The tutorial's first markdown heading, else its file name."""
    for cell in notebook(path).cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#{1,6}\s+(.+?)\s*#*\s*$", cell.source, re.M)
            if m:
                return m.group(1)
    return path.stem.replace("_", " ")


def _fence(text: str, lang: str) -> str:
    """A fenced block longer than any backtick run inside `text`."""
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def _text(value) -> str:
    return ANSI.sub("", value if isinstance(value, str) else "".join(value))


def render_outputs(outputs) -> list[str]:
    """The text and PNG outputs of one code cell, as markdown."""
    parts = []
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            parts.append(_fence(_text(out["text"]), "text"))
        elif kind == "error":
            parts.append(_fence(_text("\n".join(out.get("traceback", []))), "text"))
        elif kind in ("execute_result", "display_data"):
            data = out.get("data", {})
            if "image/png" in data:
                png = "".join(data["image/png"]).replace("\n", "")
                base64.b64decode(png, validate=True)  # a broken image fails the build here
                parts.append(f"![output](data:image/png;base64,{png})")
            elif "text/markdown" in data:
                parts.append(_text(data["text/markdown"]))
            elif "text/plain" in data:
                parts.append(_fence(_text(data["text/plain"]), "text"))
    return parts


def executed_outputs(path: Path) -> dict[str, list]:
    """Outputs of the code cells of the .ipynb beside `path`, keyed by the cell's source."""
    ipynb = path.with_suffix(".ipynb")
    if not ipynb.is_file():
        return {}
    cells = [c for c in notebook(ipynb).cells if c.cell_type == "code"]
    return {c.source.strip(): c.get("outputs", []) for c in cells}


def link_rendered(markdown: str) -> str:
    """Links to a tutorial's `.py` source point at its rendered page instead."""
    stems = {p.stem for p in tutorial_sources()}
    return re.sub(r"\]\((?:\./)?([\w-]+)\.py(#[^)\s]*)?\)",
                  lambda m: (f"]({m.group(1)}.md{m.group(2) or ''})" if m.group(1) in stems
                             else m.group(0)), markdown)


def render(path: Path) -> str:
    """The markdown page of one tutorial."""
    outputs = executed_outputs(path)
    sources = [path, path.with_suffix(".ipynb")]
    note = "*This page is made from " + " and ".join(
        f"[{p.name}]({p.name})" for p in sources if p.is_file()) + ".*"
    parts = []
    for cell in notebook(path).cells:
        if HIDDEN_TAGS & set(cell.metadata.get("tags", [])) or not cell.source.strip():
            continue
        if cell.cell_type == "markdown":
            parts.append(link_rendered(cell.source.strip()))
        elif cell.cell_type == "code":
            parts.append(_fence(cell.source, "python"))
            parts += render_outputs(outputs.get(cell.source.strip(), []))
    first = parts[0] if parts else ""
    if re.match(r"#\s", first):  # the note goes under the page's title
        heading, _, rest = first.partition("\n")
        parts[0] = "\n\n".join(p for p in (heading, note, rest.strip()) if p)
    else:
        parts.insert(0, f"# {title(path)}\n\n{note}")
    return "\n\n".join(parts) + "\n"


def index_markdown() -> str:
    """The tutorials' index page: their README.md (links to `.py` sources pointed at the
    rendered pages), else a list of the tutorials made here."""
    readme = TUTORIALS / "README.md"
    if readme.is_file():
        return link_rendered(readme.read_text())
    lines = ["# Tutorials", ""]
    sources = tutorial_sources()
    if not sources:
        lines.append("No tutorials yet: each `docs/tutorials/NN_name.py` becomes a page here.")
    lines += [f"* [{title(p)}]({p.stem}.md)" for p in sources]
    return "\n".join(lines) + "\n"


def on_config(config, **kwargs):
    """Point the Tutorials entry of the nav at the index and at every tutorial (without a nav
    in mkdocs.yml, mkdocs lists the generated pages itself)."""
    if config.nav is None:
        return config
    entries = [{"Overview": "tutorials/index.md"}]
    entries += [{title(p): f"tutorials/{p.stem}.md"} for p in tutorial_sources()]
    for item in config.nav:
        if isinstance(item, dict) and NAV_TITLE in item:
            item[NAV_TITLE] = entries
            break
    else:
        config.nav.append({NAV_TITLE: entries})
    return config


def on_files(files, config, **kwargs):
    """Add the generated pages to the site's files."""
    from mkdocs.structure.files import File

    if files.get_file_from_path("tutorials/index.md") is None:  # the tutorials have no index.md
        readme = files.get_file_from_path("tutorials/README.md")
        if readme is not None:
            files.remove(readme)  # it becomes tutorials/index.md, below
        files.append(File.generated(config, "tutorials/index.md", content=index_markdown()))
    for path in tutorial_sources():
        uri = f"tutorials/{path.stem}.md"
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, content=render(path)))
    for pattern in MIRRORED:
        for path in sorted(ROOT.glob(pattern)):
            uri = path.relative_to(ROOT).as_posix()
            if files.get_file_from_path(uri) is None:
                files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files, **kwargs):
    """Generated lists filled in (`fill_generated`); in the tutorials' own pages, links to a
    tutorial's `.py` go to its rendered page."""
    markdown = fill_generated(markdown)
    if page.file.src_uri.startswith("tutorials/"):
        return link_rendered(markdown)
    return markdown


# ----------------------------------------------------------------------------- generated lists
GENERATED = re.compile(r"<!-- (?P<key>[\w.:/-]+) -->(?P<body>.*?)<!-- /(?P=key) -->", re.S)
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", re.M)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def package_exports() -> tuple[list[str], list[str]]:
    """(modules, other names) of `jaxcnn.__all__`, read from jaxcnn/__init__.py without
    importing it: a name is a module where the file or package it is imported from exists."""
    tree = ast.parse((ROOT / "jaxcnn" / "__init__.py").read_text())
    names = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "__all__" for t in node.targets))
    origin = {alias.asname or alias.name: f"{node.module}.{alias.name}" for node in tree.body
              if isinstance(node, ast.ImportFrom) for alias in node.names}
    modules = []
    for name in names:
        path = ROOT.joinpath(*origin.get(name, "").split("."))
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            modules.append(name)
    return modules, [n for n in names if n not in modules]


def generated_text(key: str) -> str:
    """The text a `<!-- KEY -->` span holds: "jaxcnn.__all__" or "modules:api/PAGE.md"."""
    if key == "jaxcnn.__all__":
        modules, names = package_exports()
        return (f"the modules {_and([f'`{m}`' for m in modules])} and the functions "
                f"{_and([f'`{n}`' for n in names])}")
    if key.startswith("modules:"):
        page = (ROOT / "docs" / key.removeprefix("modules:")).read_text()
        return ", ".join(f"`{m.rsplit('.', 1)[1]}`" for m in DIRECTIVE.findall(page))
    raise ValueError(f"docs/hooks.py: no generated text for <!-- {key} -->")


def fill_generated(markdown: str) -> str:
    """`markdown` with every `<!-- KEY -->...<!-- /KEY -->` span holding `generated_text(KEY)`."""
    return GENERATED.sub(lambda m: f"<!-- {m['key']} -->{generated_text(m['key'])}"
                                   f"<!-- /{m['key']} -->", markdown)


def write_generated(paths: list[Path]) -> list[Path]:
    """Rewrite the generated spans of the given pages in place; returns the pages changed."""
    changed = []
    for path in paths:
        text = path.read_text()
        if fill_generated(text) != text:
            path.write_text(fill_generated(text))
            changed.append(path)
    return changed


if __name__ == "__main__":  # python docs/hooks.py: bring the generated lists up to date
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for changed in write_generated([Path(a) for a in sys.argv[1:]] or pages):
        print(f"updated {changed.relative_to(ROOT)}")
