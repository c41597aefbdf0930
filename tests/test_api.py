"""The public face: what spec/API.md names for local jobs is exported, and nothing private."""

from __future__ import annotations

import asyncjobs

# spec/API.md §1-4 and §6: the names user code relies on for local jobs.
SPEC_NAMES = {
    "JobManager",
    "Job",
    "JobState",
    "Record",
    "StateChange",
    "Buffer",
    "emit",
    "progress",
    "stop_requested",
    "AsyncJobsError",
    "JobStateError",
    "JobFailed",
    "JobStopped",
    "ConnectionFailed",
    "HostKeyError",
    "ProtocolError",
}

JOB_ATTRIBUTES = {
    "id",
    "instance_id",
    "name",
    "kind",
    "state",
    "has_more_data",
    "location",
    "command",
    "children",
    "parent",
    "started_at",
    "finished_at",
    "reason",
    "exit_status",
    "dropped",
    "wait",
    "receive",
    "receive_records",
    "stream",
    "stop",
    "state_changes",
    "statistics",
}

MANAGER_ATTRIBUTES = {
    "start_thread",
    "start_process",
    "start_command",
    "get",
    "wait",
    "stop",
    "remove",
    "statistics",
    "__getitem__",
}


def test_spec_names_are_exported() -> None:
    assert set(asyncjobs.__all__) >= SPEC_NAMES
    for name in asyncjobs.__all__:
        assert hasattr(asyncjobs, name), name


def test_exports_show_the_public_module() -> None:
    for name in asyncjobs.__all__:
        obj = getattr(asyncjobs, name)
        if isinstance(obj, type) or callable(obj):
            assert obj.__module__ == "asyncjobs", name


def test_job_and_manager_have_the_spec_attributes() -> None:
    assert {a for a in JOB_ATTRIBUTES if not hasattr(asyncjobs.Job, a)} == set()
    assert {a for a in MANAGER_ATTRIBUTES if not hasattr(asyncjobs.JobManager, a)} == set()


def test_error_hierarchy() -> None:
    for name in (
        "JobStateError",
        "JobFailed",
        "JobStopped",
        "ConnectionFailed",
        "HostKeyError",
        "ProtocolError",
        "CommandFailed",
        "RemoteError",
        "JobArgumentError",
    ):
        assert issubclass(getattr(asyncjobs, name), asyncjobs.AsyncJobsError), name
    assert issubclass(asyncjobs.JobArgumentError, TypeError)
    assert issubclass(asyncjobs.HostKeyError, asyncjobs.ConnectionFailed)


def test_streams_are_the_seven_of_the_spec() -> None:
    assert asyncjobs.STREAMS == (
        "output",
        "error",
        "warning",
        "verbose",
        "debug",
        "information",
        "progress",
    )
