"""The gallery's ES modules (``web/gallery/*.js``) are harmless when imported alone: ComfyUI imports every ``.js``
file under the pack's ``web/`` folder as a frontend extension at start-up, so a module that touched the page, the
network or storage when imported would act inside every ComfyUI tab. Each module is imported by itself in Node, with
the browser's globals replaced by traps that record any use; importing must use none of them. Calling a module's
function does use them (the traps work), and ``gallery.js`` still exports what ``ipa_gallery.js`` and
``index.html`` import."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

GALLERY_DIR = Path(__file__).resolve().parents[2] / "web" / "gallery"
MODULES = sorted(path.name for path in GALLERY_DIR.glob("*.js"))
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="Node.js is not installed (it imports the modules outside a browser)")

# Traps for the globals a module could use when imported: each records its name on first use, and stays usable.
IMPORT_ALONE = r"""
const used = [];
const trap = (name) => new Proxy(function () {}, {
  get(_, key) { if (key === Symbol.toPrimitive) return () => ""; used.push(`${name}.${String(key)}`); return trap(`${name}.${String(key)}`); },
  apply() { used.push(`${name}()`); return trap(`${name}()`); },
  construct() { used.push(`new ${name}`); return trap(`new ${name}`); },
  set(_, key) { used.push(`${name}.${String(key)}=`); return true; },
});
for (const name of ["document", "window", "localStorage", "fetch", "location", "navigator", "setTimeout", "setInterval",
                    "requestAnimationFrame", "addEventListener", "customElements"]) {
  Object.defineProperty(globalThis, name, { configurable: true, get() { used.push(name); return trap(name); } });
}
const module = await import(process.argv[1]);
const exported = Object.fromEntries(Object.entries(module).map(([key, value]) => [key, typeof value]));
const onImport = [...used];
let called = null;
if (process.argv[2]) { used.length = 0; module[process.argv[2]](); called = [...used]; }
console.log(JSON.stringify({ used: onImport, exported, called }));
"""


def import_alone(name: str, call: str = "") -> dict:
    result = subprocess.run(
        [NODE, "--experimental-default-type=module", "--input-type=module", "-e", IMPORT_ALONE, str(GALLERY_DIR / name), call],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"importing {name} alone failed:\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_gallery_is_split_into_modules():
    assert {"gallery.js", "client.js", "marks.js", "keys.js", "grid.js", "detail.js"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_importing_a_module_alone_does_nothing(name):
    found = import_alone(name)
    assert found["used"] == [], f"{name} uses {found['used']} when imported; it must only define things"
    assert found["exported"], f"{name} exports nothing"


def test_the_traps_see_a_module_that_acts():
    found = import_alone("dom.js", call="injectCss")  # adds the stylesheet to the page: uses document
    assert found["used"] == [] and any(entry.startswith("document") for entry in found["called"]), found


def test_gallery_js_exports_what_the_pages_import():
    found = import_alone("gallery.js")
    assert found["exported"] == {"createGallery": "function", "injectCss": "function"}
