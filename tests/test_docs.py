"""The documentation site builds warning-free, offline, and covers the API.

One Sphinx build per session (about 30 s on 2 cores) with warnings as errors
(``-W --keep-going``) and nitpicky references (``-n``): a broken internal
link, a docstring whose markup Sphinx cannot parse, or an API name that
fails to import fails the build. The notebooks are not executed here: the
build renders the copies that ``execute_notebook`` (tests/conftest.py) made
for tests/test_notebooks.py, whichever of the two tests runs first.
"""

import html.parser
import importlib
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

# The notebooks execute once per run (the execute_notebook fixture), so the
# notebook and docs tests share one pytest-xdist worker.
pytestmark = pytest.mark.xdist_group("notebooks")

# The generator decides what a public name is; the test checks that each one
# got its entry in the built pages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "_ext"))
from api_pages import public_names  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
PUBLIC_MODULES = [
    "jaxsoftmax",
    "jaxsoftmax.sharded",
    "jaxsoftmax.samplers",
    "jaxsoftmax.metrics",
    "jaxsoftmax.diagnostics",
    "jaxsoftmax.data",
    "jaxsoftmax.model_selection",
    "jaxsoftmax.large_vocab",
    "jaxsoftmax.nn",
    "jaxsoftmax.plots",
    "jaxsoftmax.reporting",
]


# Session scope: under pytest-xdist the group's tests may interleave with
# other modules', and the site is built once all the same.
@pytest.fixture(scope="session")
def site(tmp_path_factory, execute_notebook):
  """Builds the HTML site into a temporary folder; returns that folder."""
  executed = {execute_notebook(path).parent for path in NOTEBOOKS}
  (executed_dir,) = executed
  out = tmp_path_factory.mktemp("html")
  build = subprocess.run(
      [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going",
       "-n", "-q", "-d", str(out / ".doctrees"),
       "-D", f"executed_notebooks={executed_dir}",
       str(ROOT / "docs"), str(out)],
      capture_output=True, text=True, cwd=ROOT, check=False)
  assert build.returncode == 0, build.stdout + build.stderr
  return out


def _public_modules():
  """PUBLIC_MODULES, plus any public submodule the package imports later."""
  names = list(PUBLIC_MODULES)
  package = importlib.import_module("jaxsoftmax")
  for name in public_names(package):
    value = getattr(package, name)
    if isinstance(value, types.ModuleType) and value.__name__ not in names:
      names.append(value.__name__)
  return names


def _expected_ids():
  ids = set()
  for module_name in _public_modules():
    module = importlib.import_module(module_name)
    ids.add(f"module-{module_name}")
    for name in public_names(module):
      value = getattr(module, name)
      if isinstance(value, types.ModuleType):
        ids.add(f"module-{value.__name__}")
      else:
        ids.add(f"{module_name}.{name}")
  return ids


def test_every_public_name_has_an_api_entry(site):
  """Each public name is documented at its public path (an anchor with its id)."""
  found = set()
  for page in (site / "api").glob("*.html"):
    found |= set(re.findall(r'id="([^"]+)"', page.read_text()))
  missing = sorted(_expected_ids() - found)
  assert not missing, f"not in the API pages: {missing}"


class _LoadedUrls(html.parser.HTMLParser):
  """Collects the URLs a browser would load: scripts, styles, images, frames."""

  LOADS = {"script": "src", "img": "src", "iframe": "src", "source": "src",
           "link": "href", "embed": "src", "object": "data"}

  def __init__(self):
    super().__init__()
    self.urls = []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "link" and attrs.get("rel") not in ("stylesheet", "preload",
                                                   "icon", "modulepreload"):
      return
    url = attrs.get(self.LOADS.get(tag, ""))
    if url:
      self.urls.append(url)


def test_no_page_loads_anything_from_another_host(site):
  """Scripts, styles, fonts and images all come from the build itself."""
  remote = re.compile(r"^(https?:)?//", re.I)
  offenders = []
  for page in site.rglob("*.html"):
    parser = _LoadedUrls()
    parser.feed(page.read_text())
    offenders += [f"{page.relative_to(site)}: {u}" for u in parser.urls
                  if remote.match(u)]
  for sheet in (site / "_static").rglob("*.css"):
    for url in re.findall(r"""(?:url\(|@import)\s*['"]?([^'")\s]+)""",
                          sheet.read_text()):
      if remote.match(url):
        offenders.append(f"{sheet.relative_to(site)}: {url}")
  assert not offenders


def test_math_is_typeset_by_the_bundled_mathjax(site):
  """The API page of cross_entropy has math, and MathJax ships in _static."""
  page = (site / "api" / "losses.html").read_text()
  assert 'id="jaxsoftmax.cross_entropy"' in page
  assert r"\(" in page or r"\[" in page
  script = re.search(r'<script[^>]*src="([^"]*mathjax[^"?]*)', page).group(1)
  assert (site / "api" / script).resolve().is_file()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_pages_show_outputs(site, path):
  """Each notebook page carries the outputs of its executed cells."""
  page = (site / "notebooks" / f"{path.stem}.html").read_text()
  assert "cell_output" in page
