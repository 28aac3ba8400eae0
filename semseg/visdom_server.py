"""Start a visdom server that works offline: ``python -m semseg.visdom_server -port 8097``.

visdom 0.2.4 downloads its JavaScript, CSS and fonts from CDNs at every start, and
dies on the first one it cannot reach (MathJax raises an uncaught ``ConnectionError``),
so on a machine without internet its page never opens. The same files, at the
versions visdom's ``server/build.py`` asks for, are published as npm packages. This
module puts them into visdom's ``static/`` folder once, from ``npm pack`` (the npm
client, so any registry mirror or proxy set up in npm's config is used), checks each
against the SHA-256 listed in :data:`ASSETS`, and then starts visdom's own server
*without* its download step: once the files are in place nothing here, nor in visdom,
touches the network again. The JavaScript is never copied into this repository.

Where npm is not installed and the files are missing, visdom's own download runs, as
``python -m visdom.server`` would (that needs internet).

    python -m semseg.visdom_server -port 8097       # install the assets if needed, then serve
    python -m semseg.visdom_server --install-assets  # only install (e.g. in a Docker build)
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from semseg.errors import SemsegError

logger = logging.getLogger(__name__)

# tornado 6.6 answers visdom's page with HTTP 403: the page links the static path "../user/style.css",
# which 6.6's StaticFileHandler rejects as outside the static root (requirements.txt pins tornado<6.6).
TORNADO_BREAKS_VISDOM = (6, 6)

# (file under visdom's package folder, npm package@version, file inside the package, SHA-256 of that file).
# Names and versions are those of visdom 0.2.4's server/build.py; the glyphicon SVG is also stored under
# build.py's literal name (with its '#fragment'), so that a plain `python -m visdom.server` finds every
# file it checks for and does not try to fetch it either.
_MATHJAX = "static/js/mathjax/2.7.5/"
ASSETS: tuple[tuple[str, str, str, str], ...] = (
    ("static/js/jquery.min.js", "jquery@3.1.1", "dist/jquery.min.js", "85556761a8800d14ced8fcd41a6b8b26bf012d44a318866c0d81a62092efd9bf"),
    ("static/js/bootstrap.min.js", "bootstrap@3.3.7", "dist/js/bootstrap.min.js", "53964478a7c634e8dad34ecc303dd8048d00dce4993906de1bacf67f663486ef"),
    ("static/js/react-react.min.js", "react@16.2.0", "umd/react.production.min.js", "c28b91922bca297037cba02ec85c1c0dc179d1a942355f0b6e085f6021fa67df"),
    ("static/js/react-dom.min.js", "react-dom@16.2.0", "umd/react-dom.production.min.js", "f61ac9c43e0842c58774da732e424a606898fd211914925252ac9e64f34a77c8"),
    ("static/js/react-modal.min.js", "react-modal@3.1.10", "dist/react-modal.min.js", "096ce258905585d06758012ec6261a5dc52b11d82e112450670666109bbc6f35"),
    ("static/js/plotly-plotly.min.js", "plotly.js-dist-min@2.11.1", "plotly.min.js", "dd146b2db18d4ced4743018fa65ada14b723bf1aae08b559a5576ba8116cd889"),
    ("static/js/sjcl.js", "sjcl@1.0.7", "sjcl.js", "d09a8688f37c7442bb1e6699b46efb191d9281ef05a492586fa0f54dc4e5110a"),
    ("static/js/layout-bin-packer.js.map", "layout-bin-packer@1.4.0", "dist/layout-bin-packer.js.map", "7f39df86278f0cd247daee3ef579a09df79078e1c585bc7b8ef968266e06c0b5"),
    ("static/js/layout_bin_packer.js", "layout-bin-packer@1.4.0", "dist/layout-bin-packer.js", "312ed1834f78f497ac3c9e943ce4657679d26ad8cd62d7f722912d26c9d0ed29"),
    ("static/js/d3.v3.min.js", "d3@3.5.17", "d3.min.js", "76c39718d1c0a3fb321676b3b7e29306c0907919a5716d5728bd1b08ae0169e7"),
    ("static/js/d3-selection-multi.v1.js", "d3-selection-multi@1.0.1", "build/d3-selection-multi.js", "22f89270afc6f231f8b974e37172a15525f28035276ca960f8ccdce622700315"),
    ("static/js/saveSvgAsPng.js", "save-svg-as-png@1.4.17", "lib/saveSvgAsPng.js", "71c46f2411daf6ba2a4e38ec563d92f1da42f88da9247a2bdd5c8a10bde93ae3"),
    ("static/css/react-resizable-styles.css", "react-resizable@1.4.6", "css/styles.css", "7c9122a97c86b4be7839fd3d23c37d06aec1ece3ef830f8bae3a8c121056d528"),
    ("static/css/react-grid-layout-styles.css", "react-grid-layout@0.16.3", "css/styles.css", "4ec035a50c31ec008bab5794e88ef056043e63aaa8dcbb24d36e5a73780b4dbc"),
    ("static/css/bootstrap.min.css", "bootstrap@3.3.7", "dist/css/bootstrap.min.css", "f75e846cc83bd11432f4b1e21a45f31bc85283d11d372f7b19accd1bf6a2635c"),
    ("static/fonts/classnames", "classnames@2.2.5", "index.js", "89f83f030d5f5234436502f5d3ecfb01c1baaabe2a82785016563eb5800b674e"),
    ("static/fonts/glyphicons-halflings-regular.eot", "bootstrap@3.3.7", "dist/fonts/glyphicons-halflings-regular.eot", "13634da87d9e23f8c3ed9108ce1724d183a39ad072e73e1b3d8cbf646d2d0407"),
    ("static/fonts/glyphicons-halflings-regular.woff2", "bootstrap@3.3.7", "dist/fonts/glyphicons-halflings-regular.woff2", "fe185d11a49676890d47bb783312a0cda5a44c4039214094e7957b4c040ef11c"),
    ("static/fonts/glyphicons-halflings-regular.woff", "bootstrap@3.3.7", "dist/fonts/glyphicons-halflings-regular.woff", "a26394f7ede100ca118eff2eda08596275a9839b959c226e15439557a5a80742"),
    ("static/fonts/glyphicons-halflings-regular.ttf", "bootstrap@3.3.7", "dist/fonts/glyphicons-halflings-regular.ttf", "e395044093757d82afcb138957d06a1ea9361bdcf0b442d06a18a8051af57456"),
    ("static/fonts/glyphicons-halflings-regular.svg", "bootstrap@3.3.7", "dist/fonts/glyphicons-halflings-regular.svg", "42f60659d265c1a3c30f9fa42abcbb56bd4a53af4d83d316d6dd7a36903c43e5"),
    ("static/fonts/glyphicons-halflings-regular.svg#glyphicons_halflingsregular", "bootstrap@3.3.7", "dist/fonts/glyphicons-halflings-regular.svg", "42f60659d265c1a3c30f9fa42abcbb56bd4a53af4d83d316d6dd7a36903c43e5"),
    (_MATHJAX + "MathJax.js", "mathjax@2.7.5", "MathJax.js", "9ef249bfdc162849bcf2abe8425f5e90bd89fa4fd1588b1a492731c65b2bbfc9"),
    (_MATHJAX + "config/Safe.js", "mathjax@2.7.5", "config/Safe.js", "c3d9f149afb82798a73d14a9737a82b5cb8bb8d217de631030a702d4ae0c1d8e"),
    (_MATHJAX + "config/TeX-AMS-MML_HTMLorMML.js", "mathjax@2.7.5", "config/TeX-AMS-MML_HTMLorMML.js", "f380ca5d5257b34fc5f0e4cccd7e1447dd3dfa3b65e06ed23f2a4f6af17e19f0"),
    (_MATHJAX + "extensions/Safe.js", "mathjax@2.7.5", "extensions/Safe.js", "1b44a7b48d991ab692da9074fe8582cd47d438b57445af064ce30d2eac3871dd"),
    (_MATHJAX + "jax/output/SVG/config.js", "mathjax@2.7.5", "jax/output/SVG/config.js", "d680518add37c0d1bf50dea3c93a4cd2aa703d5e1d3e2748a0e016c26aee253c"),
    (_MATHJAX + "jax/output/SVG/jax.js", "mathjax@2.7.5", "jax/output/SVG/jax.js", "39d9a95fcde78f560cb5fcf11bb434ca5ad2349d74737b71160c8f473861fb5d"),
    (_MATHJAX + "jax/output/SVG/fonts/TeX/fontdata.js", "mathjax@2.7.5", "jax/output/SVG/fonts/TeX/fontdata.js", "c23d4bebe304610f617983eaeab7f8aa5e13a45391318f30ccf2650fbff939e1"),
    (_MATHJAX + "jax/output/SVG/fonts/TeX/Size1/Regular/Main.js", "mathjax@2.7.5", "jax/output/SVG/fonts/TeX/Size1/Regular/Main.js", "3e1c830e9c05a62f9caf86f9e13d926c38c5136b1eba8f6171953e839ce3941f"),
)  # fmt: skip


class AssetError(SemsegError):
    """visdom's browser files cannot be installed (no npm, no registry, a checksum that does not match)."""


def visdom_dir() -> Path:
    """The installed visdom package's folder (its ``static/`` is where the server serves from)."""
    spec = importlib.util.find_spec("visdom")
    if spec is None or spec.origin is None:
        raise AssetError("visdom is not installed: pip install --build-constraint build-constraints.txt -r requirements.txt")
    return Path(spec.origin).parent


def cache_dir() -> Path:
    """Where the npm tarballs are kept between installs (a new virtual environment reuses them)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "semseg" / "visdom-assets"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def missing_assets(root: Optional[Path] = None) -> list[str]:
    """The asset files absent from visdom's folder, or present with other contents."""
    root = root or visdom_dir()
    return [dest for dest, _, _, digest in ASSETS if not (root / dest).is_file() or sha256(root / dest) != digest]


def _npm_pack(package: str, into: Path, npm: str) -> Path:
    """``npm pack package@version`` into ``into`` (npm checks the tarball's registry integrity hash)."""
    name, version = package.rsplit("@", 1)
    tarball = into / f"{name.replace('/', '-')}-{version}.tgz"
    if tarball.is_file():
        return tarball
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into) as tmp:  # a pack cut short never leaves a partial tarball
        try:
            done = subprocess.run([npm, "pack", "--silent", package], cwd=tmp, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise AssetError(f"npm pack {package}: no answer from the npm registry in 300 s") from None
        packed = Path(tmp) / tarball.name
        if done.returncode != 0 or not packed.is_file():
            reason = (done.stderr.strip().splitlines() or ["no tarball written"])[-1]
            raise AssetError(f"npm pack {package} failed: {reason}")
        packed.replace(tarball)
    return tarball


def install_assets(root: Optional[Path] = None, cache: Optional[Path] = None, npm: str = "npm") -> int:
    """Put every missing asset into visdom's folder; returns how many files were written.

    Each file is checked against its SHA-256 before it is moved into place, so a
    corrupt or substituted package never reaches the browser.
    """
    root, cache = root or visdom_dir(), cache or cache_dir()
    todo = set(missing_assets(root))
    if todo and shutil.which(npm) is None:
        raise AssetError(f"{len(todo)} visdom asset files are missing and npm is not installed (install Node.js/npm, then rerun)")
    written = 0
    for package in dict.fromkeys(package for dest, package, _, _ in ASSETS if dest in todo):  # each tarball read once
        with tarfile.open(_npm_pack(package, cache, npm)) as tar:
            for dest, _, member, digest in (a for a in ASSETS if a[1] == package and a[0] in todo):
                f = tar.extractfile(f"package/{member}")
                _place(root / dest, f.read() if f is not None else b"", digest, f"{package}/{member}")
                written += 1
    _mark_built(root)
    return written


def _place(target: Path, data: bytes, digest: str, source: str) -> None:
    """Write ``data`` to ``target`` atomically, once its SHA-256 is the expected one."""
    if hashlib.sha256(data).hexdigest() != digest:
        raise AssetError(f"{source}: SHA-256 differs from the one in semseg/visdom_server.py; not installed")
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(target)
    except OSError as exc:
        raise AssetError(f"{target}: cannot write ({exc.strerror or exc}); is visdom installed somewhere read-only?") from None


def _mark_built(root: Path) -> None:
    """Write visdom's ``static/version.built``, so a plain ``python -m visdom.server`` skips its download too.

    Also an empty ``user/style.css``: the page links it through ``static_url``, which hashes the file
    and logs an error on every page load when it is absent (the CSS itself is served from the user's
    settings folder by another handler).
    """
    version = (root / "VERSION").read_text().strip() if (root / "VERSION").is_file() else ""
    built = root / "static" / "version.built"
    if version and (not built.is_file() or built.read_text().strip() != version):
        built.write_text(version)
    user_css = root / "user" / "style.css"
    if not user_css.exists():
        user_css.parent.mkdir(exist_ok=True)
        user_css.touch()


def check_tornado() -> None:
    import tornado

    if tornado.version_info[:2] >= TORNADO_BREAKS_VISDOM:
        raise AssetError(f"tornado {tornado.version} answers visdom's page with HTTP 403; pip install 'tornado<6.6'")


def prepare(npm: str = "npm") -> bool:
    """Assets in place (installed when missing); False when visdom's own download must run instead."""
    root = visdom_dir()
    missing = missing_assets(root)
    if not missing:
        _mark_built(root)
        return True
    if shutil.which(npm) is None:
        logger.warning("%d visdom asset files missing and npm not found: visdom downloads them (needs internet)", len(missing))
        return False
    logger.info("installing %d visdom asset files from npm packages (once; cached in %s)", len(missing), cache_dir())
    install_assets(root, npm=npm)
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check_tornado()
    if "--install-assets" in args:
        written = install_assets()
        logger.info("visdom assets complete in %s (%d file(s) written)", visdom_dir() / "static", written)
        return 0
    offline = prepare()
    from visdom.server import run_server  # imports tornado and the app: only once we serve

    if not offline:
        run_server.download_scripts()
    from visdom.server import app

    # visdom runs tornado in debug mode, whose autoreload restarts the server, and so empties every
    # environment, whenever any imported module's file changes: a `git pull` here would erase the curves
    app.tornado_settings["autoreload"] = False
    sys.argv = [sys.argv[0], *args]  # visdom's own argument parser: -port, -env_path, -hostname, …
    run_server.main()
    return 0


if __name__ == "__main__":
    import argparse

    from semseg.cli import run_script

    sys.exit(run_script(lambda _: main(), argparse.Namespace()))
