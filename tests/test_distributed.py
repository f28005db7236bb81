"""Environment mapping (torchrun, srun, bare process) and the launch command."""

import sys

import pytest

from electra_ds.common.errors import UserError
from electra_ds.pretraining.distributed import launch_command, setup_env, slurm_first_node, slurm_port


def test_srun_variables_map_to_torch_distributed(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)  # no scontrol: parse the nodelist ourselves
    env = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_ID": "0",
           "SLURM_JOB_ID": "123456", "SLURM_STEP_NODELIST": "gpu[007-008]"}
    info = setup_env(env)
    assert info == {"rank": 3, "local_rank": 1, "world_size": 4, "master_addr": "gpu007",
                    "master_port": str(slurm_port("123456"))}


def test_torchrun_variables_are_kept():
    env = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500",
           "SLURM_PROCID": "0", "SLURM_STEP_ID": "0"}
    assert setup_env(env)["rank"] == 1 and env["MASTER_ADDR"] == "10.0.0.1"


def test_bare_process_gets_a_one_process_world():
    env = {}
    info = setup_env(env)
    assert info["rank"] == 0 and info["world_size"] == 1 and env["MASTER_ADDR"] == "127.0.0.1"
    assert 0 < int(env["MASTER_PORT"]) < 65536


@pytest.mark.parametrize("nodelist,first", [("node1", "node1"), ("a[01-04],b2", "a01"), ("gpu[3,5-6]", "gpu3")])
def test_first_node(monkeypatch, nodelist, first):
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert slurm_first_node(nodelist) == first


def test_ports_differ_between_jobs():
    assert slurm_port("1000") != slurm_port("1001")


def test_launch_picks_torchrun_locally_and_srun_inside_slurm(monkeypatch):
    cmd = launch_command(["pretrain", "--x"], 2, environ={})
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--nproc_per_node=2" in cmd
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/srun")
    cmd = launch_command(["pretrain"], 4, nnodes=2, environ={"SLURM_JOB_ID": "7"})
    assert cmd[:3] == ["srun", "-n", "8"] and cmd[-3:] == ["-m", "electra_ds", "pretrain"]
    # one process in a SLURM job (the plugin's `srun -n1` step of a one-task job): the process itself, no nested srun
    cmd = launch_command(["pretrain"], 1, environ={"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0"})
    assert cmd == [sys.executable, "-m", "electra_ds", "pretrain"]
    assert launch_command(["pretrain"], 1, environ={})[2] == "torch.distributed.run"  # locally still torchrun


def test_srun_without_slurm_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(UserError, match="srun is not on PATH"):
        launch_command(["pretrain"], 2, launcher="srun", environ={})
    with pytest.raises(UserError, match="pretrain.nodes"):
        launch_command(["pretrain"], 2, nnodes=2, launcher="torchrun", environ={})


def test_srun_command_places_tasks_per_node_with_cpus(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    cmd = launch_command(["pretrain"], 8, nnodes=2, environ={"SLURM_JOB_ID": "7"}, srun="srun --mpi=pmix",
                         cpus_per_task=12)
    assert cmd[:10] == ["srun", "--mpi=pmix", "-n", "16", "-N", "2", "--ntasks-per-node=8", "-c", "12",
                        "--kill-on-bad-exit=1"]
    cmd = launch_command(["pretrain"], 2, environ={"SLURM_JOB_ID": "7"})
    assert "-c" not in cmd and cmd[:5] == ["srun", "-n", "2", "-N", "1"]


def test_the_same_rule_runs_with_torchrun_outside_slurm():
    cmd = launch_command(["pretrain"], 2, environ={}, srun="srun", cpus_per_task=1)
    assert cmd[2] == "torch.distributed.run" and "--nproc_per_node=2" in cmd and "srun" not in cmd


def test_launch_cli_takes_the_rule_resources(monkeypatch):
    import argparse

    from electra_ds.pretraining.distributed import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--nproc-per-node", "2", "--srun", "srun", "--cpus-per-task", "3", "--", "pretrain", "--x"])
    assert (args.srun, args.cpus_per_task, args.command) == ("srun", 3, ["--", "pretrain", "--x"])


def test_a_rank_that_fails_without_a_clear_error_is_named_by_the_launch(monkeypatch, capsys):
    """A rank's UserError (status 2) already said what is wrong; any other failure gets one line from the launch,
    with the shell's status for a signal (128 + N), instead of torchrun's ChildFailedError traceback."""
    from torch.distributed import run as torch_run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from electra_ds.pretraining import distributed

    for exitcode, status, said in [(2, 2, ""), (1, 1, "rank 1 (pid 123) failed with exit status 1 (its output is above)"),
                                   (-9, 137, "rank 1 (pid 123) failed with exit status -9 (SIGKILL)")]:
        def fail(args, exitcode=exitcode):
            raise ChildFailedError("electra_ds", {1: ProcessFailure(1, 123, exitcode, "<N/A>")})

        monkeypatch.setattr(torch_run, "run", fail)
        assert distributed._torchrun(["--standalone", "--nproc_per_node=2", "-m", "electra_ds", "pretrain"]) == status
        err = capsys.readouterr().err
        assert (said in err if said else err == "") and "Traceback" not in err


def test_ranks_import_the_installed_package_not_the_working_directorys(monkeypatch, tmp_path):
    """`python -m electra_ds` in a rank would put the working directory (a checkout, under Snakemake) first on
    sys.path, so a container's or a wheel's launch would run the checkout's copy in its ranks: the launch sets
    PYTHONSAFEPATH for them, and a rank started so does not import a planted electra_ds from its working directory."""
    import argparse
    import os
    import subprocess

    from torch.distributed import run as torch_run

    from electra_ds.pretraining import distributed

    seen = {}
    monkeypatch.setenv("PYTHONSAFEPATH", "")  # recorded, so that teardown removes what the launch sets
    monkeypatch.delenv("PYTHONSAFEPATH")
    monkeypatch.setattr(torch_run, "run", lambda args: seen.setdefault("safe", os.environ.get("PYTHONSAFEPATH")))
    parser = argparse.ArgumentParser()
    distributed.add_arguments(parser)
    assert distributed.run_launch(parser.parse_args(["--nproc-per-node", "2", "--", "pretrain"])) == 0
    assert seen["safe"] == "1"

    (tmp_path / "electra_ds").mkdir()
    (tmp_path / "electra_ds" / "__init__.py").write_text("raise SystemExit('the planted copy')\n")
    res = subprocess.run([sys.executable, "-c", "import electra_ds, sys; print(electra_ds.__file__)"], cwd=tmp_path,
                         env={**os.environ, "PYTHONSAFEPATH": "1"}, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and str(tmp_path) not in res.stdout, res.stdout + res.stderr


def test_a_stall_report_is_the_only_line_when_torchrun_saw_the_killed_rank_first(monkeypatch, capsys):
    """A stalled rank's watchdog SIGKILLs the stalled rank and exits 3 after its one line. torchrun may see the killed
    rank first: the launch still ends with 3, prints nothing more, and torchrun's own "failed (exitcode: -9)" record
    (it names the first rank it saw end) is filtered out of its log, as are its "Sending process" lines."""
    import logging

    from torch.distributed import run as torch_run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from electra_ds.pretraining import distributed

    killed, reporter = ProcessFailure(1, 22950, -9, "<N/A>"), ProcessFailure(0, 22949, 3, "<N/A>")
    killed.timestamp, reporter.timestamp = 100, 101

    def fail(args):
        raise ChildFailedError("electra_ds", {1: killed, 0: reporter})

    monkeypatch.setattr(torch_run, "run", fail)
    assert distributed._torchrun(["--standalone", "--nproc_per_node=2", "-m", "electra_ds", "pretrain"]) == 3
    assert capsys.readouterr().err == ""

    def record(msg, *args):
        return logging.LogRecord("torch.distributed.elastic.multiprocessing.api", logging.ERROR, "api.py", 1002, msg,
                                 args, None)

    drop = distributed._drop_torchrun_failure_lines
    assert not drop(record("failed (exitcode: %s) local_rank: %s (pid: %s) of binary: %s", -9, 1, 22950, "python"))
    assert not drop(record("failed (exitcode: %s) local_rank: %s (pid: %s) of binary: %s", 1, 0, 22949, "python"))
    assert not drop(record("Sending process %s closing signal %s", 22949, "SIGTERM"))
    assert drop(record("Starting elastic_operator with launch configs: %s", "..."))


def test_the_stall_watchdog_thread_is_gone_after_stop(tmp_path):
    """stop() joins the watchdog: a daemon thread alive at interpreter exit aborted ranks of finished runs
    ('terminate called without an active exception')."""
    import threading

    from electra_ds.pretraining.distributed import StallWatch

    watch = StallWatch(tmp_path / "beats", 0, 1, timeout_s=60)
    assert any(t.name == "stall-watchdog" for t in threading.enumerate())
    watch.progress(3, "training")
    watch.stop()
    assert not any(t.name == "stall-watchdog" for t in threading.enumerate())
    assert '"rank": 0' in (tmp_path / "beats" / "rank-0.json").read_text()  # the heartbeat it wrote at the start


def test_heartbeats_are_never_written_through_a_planted_link(tmp_path):
    """The stall watchdog's heartbeat files (<output>/.heartbeats) are written beside the run: a link planted at a
    heartbeat's temporary or final name is replaced, and what it points at is untouched."""
    import os

    from electra_ds.pretraining.distributed import StallWatch

    beats = tmp_path / "beats"
    beats.mkdir()
    outside = tmp_path / "precious.txt"
    outside.write_text("precious\n")
    os.symlink(outside, beats / ".rank-0.json.tmp")
    os.symlink(outside, beats / "rank-1.json")
    for rank in (0, 1):
        StallWatch(beats, rank, 2, timeout_s=60).stop()
        assert f'"rank": {rank}' in (beats / f"rank-{rank}.json").read_text()
        assert not (beats / f"rank-{rank}.json").is_symlink()
    assert outside.read_text() == "precious\n"


@pytest.mark.parametrize("world", ["1", "2"])
def test_a_rank_leaves_with_its_error_status_whatever_the_interpreters_teardown_does(tmp_path, world):
    """A rank of a multi-process run that ends in an error exits with its status without the interpreter's
    teardown, where a native thread left joinable has aborted a rank (SIGABRT, status 134 instead of 2) once in CI.
    Here an exit handler stands in for that abort: a one-process run still reaches it, a rank of two does not."""
    import os
    import subprocess

    code = ("import atexit, os, runpy, sys\n"
            "atexit.register(lambda: os._exit(134))\n"
            f"sys.argv = ['electra_ds', 'export', '--tokenizer-dir', {str(tmp_path / 'none')!r}, '--output-dir', "
            f"{str(tmp_path / 'out')!r}, '--results-dir', {str(tmp_path)!r}]\n"
            "runpy.run_module('electra_ds', run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "SLURM_NTASKS", "RANK")}
    res = subprocess.run([sys.executable, "-c", code], env={**env, "WORLD_SIZE": world}, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == (134 if world == "1" else 2), res.stderr[-2000:]
    assert "electra-ds export: error:" in res.stderr and "nothing to export" in res.stderr
    assert not (tmp_path / "out").exists()
