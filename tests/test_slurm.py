"""Scale-out through a real SLURM: a one-node cluster (slurmctld, slurmd, slurmdbd + MariaDB, munged) brought up
on this machine runs tests/configs/tiny.yaml with `--executor slurm` and the Perlmutter profile's rule resources.

Checked: every rule ran as a SLURM job (sacct), the per-shard rules as job arrays, GPU rules asked for `-C gpu`, a
GPU and the GPU account, CPU rules for `-C cpu` and the CPU account; a job (an array task) cancelled with scancel
is retried with more time and the run completes; the outputs are byte-identical to a local run; every daemon is stopped afterwards.
Bounded: each Snakemake run by `timeout -s INT -k 30`, the whole module by an alarm.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import RESOURCES, ROOT, SNAKEMAKE, TINY
from slurm.cluster import Cluster, client_env, missing_programs

pytestmark = pytest.mark.slow

# Rules that must land on GPU nodes (each has its line in set-resources of profiles/slurm/config.yaml). Those in
# the test's DAG are checked against sacct.
GPU_RULES = ("simulate", "train_peak_finder", "train_hit_classifier", "train_energy_distance", "simulate_shifted",
             "predict", "matched_frames", "train_matched_peak_finder", "train_phase_model")
# Left out of the SLURM run (with everything downstream), to keep it near 2.5 min on 2 cores: stages that take
# minutes here and would test nothing the other rules do not (simulate already shows GPU placement). Training
# also writes model cards with a uuid4, wall times and hardware by design, so its outputs are not byte-identical
# between runs; its weights are (tests/test_ml.py).
OMIT_FROM = ("dials_stills_process", "dials_experiment", "benchmark_summary", "train_peak_finder",
             "train_hit_classifier", "baseline_peak_finder", "energy_distance_profiles", "matched_structure_factors",
             "phase_dataset")
# Per-shard rules that profiles/slurm submits as job arrays (slurm-array-jobs)
ARRAY_RULES = ("simulate", "overlay", "dials_stills_process", "dials_tables")
ACCOUNT = "bragg"  # the test cluster's accounts: bragg (CPU) and bragg_g (GPU)
RUN_TIMEOUT_S = 360  # one Snakemake run through SLURM (about 2.5 min here)
MODULE_TIMEOUT_S = 900  # everything: bring-up, the local run (conftest's tiny_run, when no test made it yet),
#                         the SLURM run, checks, tear-down
PROFILE = ROOT / "profiles/slurm/config.yaml"
OVERRIDES = ROOT / "tests/slurm/profile/config.yaml"


def merged_profile(base: dict, overrides: dict) -> dict:
    """The Perlmutter profile with the test's overrides: mappings merge per key (per rule), the rest replaces."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            for sub, subvalue in value.items():
                if isinstance(subvalue, dict) and isinstance(out[key].get(sub), dict):
                    out[key][sub] = {**out[key][sub], **subvalue}
                else:
                    out[key][sub] = subvalue
        else:
            out[key] = value
    return out


class _ModuleTimeout(Exception):
    pass


@pytest.fixture(scope="module")
def deadline():
    """An alarm over the whole module: a hang anywhere fails the test instead of blocking CI."""

    def expire(signum, frame):
        raise _ModuleTimeout(f"tests/test_slurm.py ran past {MODULE_TIMEOUT_S} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(MODULE_TIMEOUT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def cluster(deadline, tmp_path_factory):
    missing = missing_programs()
    if missing:
        pytest.skip(f"SLURM test cluster needs Debian slurm-wlm, munge, slurmdbd, mariadb-server (make install); "
                    f"missing: {', '.join(missing)}")
    if os.geteuid() != 0:
        pytest.skip("SLURM test cluster: daemons run as root and the config must be /etc/slurm/slurm.conf")
    c = Cluster(accounts=(ACCOUNT, f"{ACCOUNT}_g"))
    c.up()
    try:
        yield c
    finally:
        c.down(keep_logs=tmp_path_factory.mktemp("slurm-cluster-logs"))
        left = c.running()
        assert not left, f"daemons still running after tear-down: {left}"


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """tiny.yaml through SLURM; the first job of a GPU rule is cancelled with scancel once it runs."""
    tmp = tmp_path_factory.mktemp("slurm")
    profile = tmp / "profile"
    profile.mkdir()
    merged = merged_profile(yaml.safe_load(PROFILE.read_text()), yaml.safe_load(OVERRIDES.read_text()))
    (profile / "config.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    work = tmp / "work"
    work.mkdir()
    (work / "resources").symlink_to(RESOURCES)

    cancelled: list[str] = []
    stop = threading.Event()
    canceller = threading.Thread(target=cancel_first_gpu_job, args=(cancelled, stop), daemon=True)
    canceller.start()
    cmd = ["timeout", "-s", "INT", "-k", "30", str(RUN_TIMEOUT_S), str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"),
           "--directory", str(work), "--configfile", str(TINY), "--profile", str(profile), "--omit-from", *OMIT_FROM]
    env = dict(client_env(), PYTHONHASHSEED="0", BRAGGFLOW_SLURM_ACCOUNT=ACCOUNT)
    t0 = time.monotonic()
    # its own session, so that the module's alarm (or anything else) can kill timeout and Snakemake together
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=RUN_TIMEOUT_S + 60)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        stop.set()
        canceller.join(timeout=10)
    seconds = time.monotonic() - t0
    (tmp / "snakemake.log").write_text(log)
    assert proc.returncode == 0, f"exit {proc.returncode} after {seconds:.0f} s (124: timed out)\n{log[-5000:]}"
    jobs = sacct_jobs()
    return {"work": work, "profile": merged, "cancelled": cancelled, "log": log, "jobs": jobs,
            "retried": retries_of(jobs, cancelled)}


def base_id(jobid: str) -> int:
    """SLURM's job id of a job or of an array task's array (<array job id>_<task>)."""
    return int(jobid.split("_")[0])


def retries_of(jobs: list[dict], cancelled: list[str]) -> list[str]:
    """Jobs of a cancelled job's rule submitted after it with a longer time limit (the next attempt)."""
    by_id = {j["JobID"]: j for j in jobs}
    out = []
    for c in cancelled:
        first = by_id.get(c)
        if first is None:
            continue
        rules = rules_of(first, GPU_RULES)
        out += [j["JobID"] for j in jobs if rules_of(j, GPU_RULES) == rules and base_id(j["JobID"]) > base_id(c)
                and minutes(j["Timelimit"]) > minutes(first["Timelimit"])]
    return out


def cancel_first_gpu_job(cancelled: list[str], stop: threading.Event) -> None:
    """scancel the first job of a GPU rule a few seconds after it starts running."""
    while not stop.is_set():
        q = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], capture_output=True, text=True,
                           env=client_env())
        for line in q.stdout.splitlines():
            jobid, _, comment = line.partition("|")
            if any(rule in comment for rule in GPU_RULES):
                time.sleep(3)
                subprocess.run(["scancel", jobid], env=client_env(), capture_output=True)
                cancelled.append(jobid)
                return
        time.sleep(0.5)


def sacct_jobs() -> list[dict]:
    fields = ["JobID", "JobName", "Account", "QOS", "Constraints", "ReqTRES", "AllocTRES", "Timelimit", "State",
              "Comment"]
    # slurmdbd may take a moment to record the last job's end
    for _ in range(20):
        res = subprocess.run(["sacct", "-X", "--parsable2", "--noheader", "--starttime", "now-1hour",
                              "-o", ",".join(fields)], capture_output=True, text=True, env=client_env(), check=True)
        jobs = [dict(zip(fields, line.split("|"))) for line in res.stdout.splitlines() if line]
        jobs = [j for j in jobs if j["JobName"].startswith("braggflow_")]
        if jobs and not any(j["State"] in ("PENDING", "RUNNING") for j in jobs):
            return jobs
        time.sleep(0.5)
    return jobs


def is_gpu_job(job: dict) -> bool:
    # The executor's job comment: rule_<rule>_wildcards_<...> or, for a group, rule_<group>_<rule>_<rule>...
    return bool(rules_of(job, GPU_RULES))


def rules_of(job: dict, names) -> set[str]:
    return {n for n in names if re.search(rf"(^|_){re.escape(n)}(_|$)", job["Comment"].removeprefix("rule_"))}


def test_the_test_profile_keeps_the_perlmutter_rule_resources():
    base = yaml.safe_load(PROFILE.read_text())
    merged = merged_profile(base, yaml.safe_load(OVERRIDES.read_text()))
    for key in ("default-resources", "set-resources", "groups", "group-components", "resources",
                "slurm-status-command", "slurm-array-jobs", "jobs", "max-jobs-per-timespan"):
        assert merged[key] == base[key], key
    for rule in GPU_RULES:
        res = base["set-resources"][rule]
        assert res["constraint"] == "gpu" and res["gpu"] >= 1 and res["cpus_per_gpu"] >= 1
        assert res["slurm_account"].endswith("_g'") and "$BRAGGFLOW_SLURM_ACCOUNT" in res["slurm_account"].replace(
            "{", "").replace("}", "")
    assert "BRAGGFLOW_SLURM_ACCOUNT" in base["default-resources"]["slurm_account"]


def test_every_rule_ran_as_a_slurm_job(slurm_run):
    jobs = slurm_run["jobs"]
    rules = planned_rules(slurm_run["log"])
    seen = set().union(*(rules_of(j, rules) for j in jobs))
    assert seen == rules - {"all"}, (seen, rules)  # `all` is a local rule
    assert all(j["State"] == "COMPLETED" or j["JobID"] in slurm_run["cancelled"] for j in jobs), jobs


def test_gpu_rules_asked_for_gpu_nodes_and_gpus_and_cpu_rules_for_cpu_nodes(slurm_run):
    gpu = [j for j in slurm_run["jobs"] if is_gpu_job(j)]
    cpu = [j for j in slurm_run["jobs"] if not is_gpu_job(j)]
    assert gpu and cpu
    for j in gpu:
        assert j["Constraints"] == "gpu" and j["Account"] == f"{ACCOUNT}_g" and j["QOS"] == "shared", j
        assert "gres/gpu=1" in j["ReqTRES"] and "gres/gpu=1" in j["AllocTRES"], j
        assert "cpu=32" in j["AllocTRES"], j  # cpus_per_gpu
    for j in cpu:
        assert j["Constraints"] == "cpu" and j["Account"] == ACCOUNT and j["QOS"] == "shared", j
        assert "gres/gpu" not in j["AllocTRES"], j


def test_per_shard_rules_went_as_job_arrays(slurm_run):
    """simulate's 4 shards are ready together: arrays of at most slurm-array-limit (3) tasks, fewer sbatch calls
    than jobs; every first attempt of simulate is an array task (<array job id>_<task>)."""
    assert set(ARRAY_RULES) <= set(slurm_run["profile"]["slurm-array-jobs"].split(","))
    limit = slurm_run["profile"]["slurm-array-limit"]
    tasks = [j for j in slurm_run["jobs"] if j["Comment"].removeprefix("rule_").split("_wildcards_")[0] == "simulate"]
    arrays = {}
    for j in tasks:
        if "_" in j["JobID"]:
            arrays.setdefault(base_id(j["JobID"]), []).append(j)
    first_attempts = [j for j in tasks if j["JobID"] not in slurm_run["retried"]]
    assert first_attempts and all("_" in j["JobID"] for j in first_attempts), tasks
    assert max(len(a) for a in arrays.values()) >= 2 and all(len(a) <= limit for a in arrays.values()), arrays
    assert len(arrays) < len(first_attempts)  # fewer submissions than jobs
    assert "Submitted array job" in slurm_run["log"]


def test_a_cancelled_job_is_retried_with_more_time_and_the_run_completes(slurm_run):
    jobs = {j["JobID"]: j for j in slurm_run["jobs"]}
    assert len(slurm_run["cancelled"]) == 1, "no GPU job was seen running to cancel"
    first = jobs[slurm_run["cancelled"][0]]
    assert first["State"].startswith("CANCELLED"), first
    retry = [jobs[i] for i in slurm_run["retried"]]
    assert [j["State"] for j in retry] == ["COMPLETED"], retry
    assert rules_of(retry[0], GPU_RULES) == rules_of(first, GPU_RULES)
    assert minutes(retry[0]["Timelimit"]) == 2 * minutes(first["Timelimit"])  # runtime grows with the attempt


def test_outputs_are_byte_identical_to_a_local_run(slurm_run, tiny_run):
    slurm_files = result_files(slurm_run["work"])
    local_files = result_files(tiny_run)
    assert set(slurm_files) <= set(local_files), sorted(set(slurm_files) - set(local_files))
    stages = {Path(rel).parts[1] for rel in slurm_files}
    assert {"structure_factors", "geometry", "backgrounds", "simulated", "overlays"} <= stages, stages
    differ = [rel for rel in slurm_files if slurm_files[rel].read_bytes() != local_files[rel].read_bytes()]
    assert not differ


def result_files(work: Path) -> dict[str, Path]:
    """Every workflow output under results/ (benchmarks hold timings, report.html is written on request)."""
    return {str(p.relative_to(work)): p for p in (work / "results").rglob("*")
            if p.is_file() and "benchmarks" not in p.parts and p.name != "report.html"}


def planned_rules(log: str) -> set[str]:
    """Rules in the run's own job table ("Job stats:", printed before the first job)."""
    table = log.split("Job stats:", 1)[1].split("total", 1)[0]
    return set(re.findall(r"^(\w+)\s+\d+\s*$", table, re.M))


def minutes(limit: str) -> int:
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return (int(days) if days else 0) * 1440 + h * 60 + m + (1 if s else 0)


def test_jobs_ran_the_projects_snakemake(slurm_run):
    """The executor runs `python -m snakemake` with the submitting interpreter: .venv's, with its packages."""
    logs = list((slurm_run["work"] / "logs/slurm").rglob("*.log"))
    assert logs
    for log in logs:
        if log.stem in slurm_run["cancelled"]:
            continue  # scancel may stop it before its first line
        command = re.search(r"^\s*Command: (\S+)", log.read_text(), re.M)
        assert command and command.group(1).startswith(sys.prefix), (log, command)
