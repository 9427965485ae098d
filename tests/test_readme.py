"""The README's commands work as written: every `snakemake` command line in README.md and config/README.md parses
the way a user expects (targets are targets, config files are config files), and a user's config extends or
replaces the default as the README says."""

import re
import shlex
import subprocess

import pytest
import yaml

from conftest import ROOT, SNAKEMAKE, TINY

DOCS = (ROOT / "README.md", ROOT / "config/README.md")


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) of every snakemake command line in the docs' shell blocks and inline code."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
        lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
        lines += re.findall(r"`((?:\.venv/bin/)?snakemake [^`]+)`", text)
        out += [(doc.name, line) for line in lines if re.match(r"(\.venv/bin/)?snakemake\s", line)]
    return sorted(set(out))


def rule_names() -> set[str]:
    return {m for smk in (ROOT / "rules").glob("*.smk") for m in re.findall(r"^rule (\w+):", smk.read_text(), re.M)}


def test_the_docs_have_commands_to_check():
    assert len(documented_commands()) >= 15


@pytest.mark.parametrize("doc,command", documented_commands())
def test_every_documented_command_parses_as_written(doc, command):
    from snakemake.cli import get_argument_parser

    args = get_argument_parser().parse_args(shlex.split(command)[1:])
    for path in args.configfile or []:
        # A target after --configfile would be read as a config file (FileNotFoundError for results/...).
        assert str(path).endswith((".yaml", ".yml")), f"{doc}: `{command}` reads {path} as a config file"
        assert path.name == "my.yaml" or (ROOT / path).is_file(), f"{doc}: `{command}`: no config file {path}"
    rules = rule_names()
    for target in args.targets:
        assert target.startswith("results/") or target in rules, f"{doc}: `{command}`: unknown target {target}"
    for name in [*(args.forcerun or []), *(args.until or [])]:
        assert name in rules, f"{doc}: `{command}`: no rule {name}"


def planned_rules(*args: str) -> str:
    res = subprocess.run([str(SNAKEMAKE), "-n", "--quiet", "rules", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return res.stdout


def test_a_user_config_extends_the_default_or_replaces_it_as_the_readme_says(tmp_path):
    default = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    # Two keys over the default: the default's nine datasets and its experiments stay.
    mine = tmp_path / "my.yaml"
    mine.write_text(yaml.safe_dump({"overlay": {"gallery_frames": 2}}))
    extended = planned_rules("--configfile", str(mine))
    assert re.search(r"^overlay_gallery\s+9$", extended, re.M), extended
    assert default["experiments"] and re.search(r"^import_frames_dxtbx\s+[1-9]", extended, re.M), extended
    # --replace-workflow-config: only what the file says (the tiny config: 2 datasets, its own experiments).
    replaced = planned_rules("--replace-workflow-config", "--configfile", str(TINY))
    assert re.search(r"^overlay_gallery\s+2$", replaced, re.M), replaced


def test_the_own_experiment_walkthrough_config_is_valid_and_plans_its_jobs(tmp_path):
    """The README's "Your own experiment" config block, as a user would save it: it validates, and the
    walk-through's command plans the import, DIALS and the evaluation of its frames."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Your own experiment", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    mine = tmp_path / "my.yaml"
    mine.write_text(block)
    name = next(iter(yaml.safe_load(block)["experiments"]))
    command = next(line for _, line in documented_commands() if "results/evaluation/summary.tsv --configfile my.yaml"
                   in line and line in section)
    argv = [a if a != "my.yaml" else str(mine) for a in shlex.split(command)[1:]]
    res = subprocess.run([str(SNAKEMAKE), "-n", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    for planned in (f"results/experiments/{name}/frames.h5", f"results/experiments/{name}/dials/export.npz",
                    f"results/evaluation/{name}/peak_finder-8keV_150mm/frames.tsv"):
        assert planned in res.stdout, planned


def test_the_own_experiment_walkthrough_runs_at_tiny_sizes(tiny_run, tmp_path):
    """The walk-through on the tiny workflow's results (its matrix models in place of the default's): the README's
    config block with the tiny matrix's model and its snakemake command run, and the evaluation table gets the
    experiment's rows, scored against DIALS."""
    import os
    import shutil

    import pandas as pd

    from conftest import run_snakemake

    work = tmp_path / "work"
    # hard links for the (never rewritten in place) results; copies for what Snakemake rewrites
    shutil.copytree(tiny_run / "results", work / "results", copy_function=os.link)
    for d in (".snakemake", "logs"):
        if (tiny_run / d).exists():
            shutil.copytree(tiny_run / d, work / d, symlinks=True)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Your own experiment", 1)[1].split("\n## ", 1)[0]
    mine = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    name = next(iter(mine["experiments"]))
    mine["experiments"][name]["models"] = ["8keV_100mm"]  # the tiny matrix's model of the nearest energy
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(mine))
    command = next(line for _, line in documented_commands() if "results/evaluation/summary.tsv --configfile my.yaml"
                   in line and line in section)
    target = shlex.split(command)[shlex.split(command).index("--cores") + 2]
    res = run_snakemake(work, target, "--configfile", str(TINY), str(tmp_path / "my.yaml"), timeout=1200)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    s = pd.read_csv(work / "results/evaluation/summary.tsv", sep="\t")
    rows = s[s.experiment == name]
    assert set(rows.reference) == {"dials"} and set(rows.finder) == {"cnn", "dispersion", "dials"}
    assert set(rows.model) == {"peak_finder-8keV_100mm"} and (rows.frames == 2).all()
    assert rows[rows.finder == "dials"].recall.iloc[0] > 0.9
