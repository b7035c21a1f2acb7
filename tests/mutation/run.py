"""`make mutate`: mutation testing, one module at a time, each with only its own tests.

For every `[tool.csvcompress.mutate.<name>]` table in pyproject.toml this stages a copy of
the tree under mutants/runs/<name>/ (gitignored), whose pyproject.toml carries the shared
`[tool.mutmut]` section plus that module's `only_mutate` and test selection, runs mutmut
there, and writes every module's score and surviving mutants to tests/mutation/results.md.

A mutant listed in tests/mutation/equivalent.toml (one line each on why it changes nothing a
user could see) is left out of the score. The score is killed / (mutants - equivalent), with
timeouts counted as killed (the mutant hung the tests). Exit status 1 when a module is below
the floor, or when an equivalent entry no longer names a surviving mutant (stale).

Usage: python tests/mutation/run.py [name ...] [--jobs N]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "mutants" / "runs"
RESULTS = ROOT / "tests" / "mutation" / "results.md"
EQUIVALENT = ROOT / "tests" / "mutation" / "equivalent.toml"
FLOOR = 0.95
KILLED = {"killed", "timeout", "caught by type check"}


@dataclass
class Outcome:
    name: str
    module: str
    tests: list[str]
    scope: list[str]
    seconds: float = 0.0
    status: dict[str, str] = field(default_factory=dict)
    diffs: dict[str, str] = field(default_factory=dict)
    equivalent: dict[str, str] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)

    @property
    def killed(self) -> int:
        return sum(1 for s in self.status.values() if s in KILLED)

    @property
    def survivors(self) -> list[str]:
        return sorted(
            k for k, s in self.status.items() if s not in KILLED and k not in self.equivalent
        )

    @property
    def score(self) -> float:
        judged = len(self.status) - len(self.equivalent)
        return self.killed / judged if judged else 1.0


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _stage(name: str, module: str, tests: list[str], deselect: list[str]) -> Path:
    stage = RUNS / name
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "csvcompress", stage / "csvcompress", ignore=ignore)
    shutil.copytree(ROOT / "tests", stage / "tests", ignore=ignore)
    text = (ROOT / "pyproject.toml").read_text()
    for extra_file in tomllib.loads(text)["tool"]["mutmut"].get("also_copy", []):
        shutil.copy(ROOT / extra_file, stage / extra_file)
    shared = tomllib.loads(text)["tool"]["mutmut"].get("pytest_add_cli_args", [])
    shared += ["-p", "tests.mutation.forksafe"]  # libvips made safe to fork (see there)
    extra = (
        f"only_mutate = {_toml_list([module])}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
        f"pytest_add_cli_args = {_toml_list(shared + [f'--deselect={t}' for t in deselect])}\n"
    )
    text = re.sub(r"(?m)^pytest_add_cli_args = .*\n", "", text)
    text = text.replace("[tool.mutmut]\n", "[tool.mutmut]\n" + extra, 1)
    (stage / "pyproject.toml").write_text(text)
    return stage


def _mutmut(stage: Path, *args: str) -> str:
    exe = Path(sys.executable).with_name("mutmut")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSVCOMPRESS_")}
    done = subprocess.run(
        [str(exe), *args], cwd=stage, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.stdout.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"mutmut {' '.join(args)} failed in {stage}")
    return done.stdout


def run_module(
    name: str, spec: dict[str, object], jobs: int, equivalent: dict[str, str]
) -> Outcome:
    module, tests = str(spec["module"]), [str(t) for t in spec["tests"]]  # type: ignore[attr-defined]
    scope = [str(p) for p in spec.get("mutants", [])]  # type: ignore[attr-defined]
    deselect = [str(t) for t in spec.get("deselect", [])]  # type: ignore[attr-defined]
    out = Outcome(name, module, tests, scope)
    stage = _stage(name, module, tests, deselect)
    start = time.monotonic()
    print(f"== {name}: mutating {module} against {' '.join(tests)}", flush=True)
    _mutmut(stage, "run", "--max-children", str(jobs), *scope)
    out.seconds = time.monotonic() - start
    for line in _mutmut(stage, "results", "--all", "true").splitlines():
        m = re.match(r"\s*(\S+): (.+)$", line)
        if m and (not scope or any(fnmatch.fnmatch(m.group(1), p) for p in scope)):
            out.status[m.group(1)] = m.group(2).strip()
    for key, why in equivalent.items():
        if out.status.get(key) in KILLED or key not in out.status:
            out.stale.append(key)
        else:
            out.equivalent[key] = why
    for key in out.survivors + sorted(out.equivalent):
        out.diffs[key] = _mutmut(stage, "show", key).split("\n", 1)[1].strip()
    print(
        f"   {len(out.status)} mutants, {out.killed} killed, {len(out.equivalent)} equivalent,"
        f" {len(out.survivors)} survived: {out.score:.1%} in {out.seconds:.0f} s",
        flush=True,
    )
    return out


def _changed_lines(diff: str) -> str:
    keep = [ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
    return "\n".join(keep)


def write_results(outcomes: list[Outcome], command: str) -> None:
    lines = [
        "# Mutation testing results",
        "",
        f"Written by `{command}` (mutmut {version('mutmut')}) on"
        f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Do not edit by hand;"
        " equivalent mutants are listed, with why, in tests/mutation/equivalent.toml.",
        "",
        "Score = killed / (mutants - equivalent); a timeout counts as killed."
        f" Floor: {FLOOR:.0%} in every module.",
        "",
        "| module | tests run | mutants | killed | equivalent | survived | score | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        tests = ", ".join(Path(t).name for t in o.tests)
        lines.append(
            f"| `{o.module}` | {tests} | {len(o.status)} | {o.killed} | {len(o.equivalent)}"
            f" | {len(o.survivors)} | {o.score:.1%} | {o.seconds:.0f} s |"
        )
    for o in outcomes:
        lines += ["", f"## {o.name} (`{o.module}`)", ""]
        if o.scope:
            lines += ["Mutated: only " + ", ".join(f"`{p}`" for p in o.scope), ""]
        if o.stale:
            lines.append("Stale equivalent entries (no longer surviving): " + ", ".join(o.stale))
            lines.append("")
        lines.append(f"### Surviving mutants ({len(o.survivors)})")
        for key in o.survivors:
            lines += [
                "",
                f"`{key}` ({o.status[key]})",
                "```diff",
                _changed_lines(o.diffs[key]),
                "```",
            ]
        lines += ["", f"### Equivalent mutants ({len(o.equivalent)})", ""]
        for key, why in sorted(o.equivalent.items()):
            lines.append(f"- `{key}`: {why}")
            lines += [
                "  ```diff",
                *("  " + ln for ln in _changed_lines(o.diffs[key]).splitlines()),
                "  ```",
            ]
    RESULTS.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="modules to run (default: all)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    specs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["csvcompress"]["mutate"]
    equivalent = tomllib.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    names = args.names or list(specs)
    outcomes = [run_module(n, specs[n], args.jobs, equivalent.get(n, {})) for n in names]
    command = "make mutate" if not args.names else f"make mutate MODULES='{' '.join(names)}'"
    write_results(outcomes, command)
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    failed = [o.name for o in outcomes if o.score < FLOOR or o.stale]
    if failed:
        print("below the floor or with stale equivalents: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
