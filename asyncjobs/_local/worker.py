"""The child side of process jobs: ``main()`` runs in every worker process.

The parent starts it as ``python -c BOOT .../asyncjobs/_worker.py`` (see ``frames.worker_argv``),
which loads this file on its own, without the package: ``import asyncjobs`` costs anyio and attrs
(well over 100 ms), and a fresh worker should cost little more than a bare ``python``. So this
module imports only small parts of the standard library (``_pickle``, not ``pickle``; no
``typing``), and the rest only when a job needs it (``asyncio`` for an async function,
``traceback`` for an error, ``multiprocessing.spawn`` for the parent's ``__main__``).

The protocol (this module is its single definition; the parent imports the constants):

- Frames are ``HEADER`` (the length, little-endian u64) then a pickle. They travel on private fds:
  the worker dups its original stdin/stdout for them, then points fd 0 at ``/dev/null`` and fd 1
  at fd 2 (the parent's stderr), so that a job's ``print()`` cannot corrupt the protocol.
- Parent to child: first the preparation data (``multiprocessing.spawn.get_preparation_data``),
  then one frame per job: ``(cwd, env, pickled (fn, args, kwargs))``. EOF means "exit".
- Child to parent, per job: any number of ``(ITEM, stream, value)``, then exactly one of
  ``(RESULT, value)`` (``None``: no item) or ``(ERROR, type_name, message, traceback_text,
  pickled_exception_or_None)``.
"""

from __future__ import annotations

import _pickle
import _thread
import os
import struct
import sys
import types

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; mypy honours this spelling too
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final

HEADER: Final = struct.Struct("<Q")
ITEM: Final = 0
RESULT: Final = 1
ERROR: Final = 2
_CONTEXT: Final = "asyncjobs._core.context"  # imported only if the job's code imports asyncjobs


class Channel:
    """The worker's end of the frame protocol: blocking reads and writes on private fds."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self._reader = open(rfd, "rb", buffering=1 << 16)  # noqa: SIM115 - lives as long as the worker
        self._wfd = wfd
        self._lock = _thread.allocate_lock()  # threads of a job may emit at the same time

    def read(self) -> bytes | None:
        """The next frame, or ``None`` once the parent has closed our stdin."""
        head = self._reader.read(HEADER.size)
        if len(head) < HEADER.size:
            return None
        (size,) = HEADER.unpack(head)
        data = self._reader.read(size)
        return data if len(data) == size else None

    def send(self, data: bytes) -> None:
        """Write one already pickled message as a frame (one ``writev`` in the common case)."""
        with self._lock:
            head = HEADER.pack(len(data))
            done = os.writev(self._wfd, (head, data))
            rest = memoryview(head + data)[done:] if done < len(head) + len(data) else b""
            while rest:
                rest = rest[os.write(self._wfd, rest) :]


def dumps(message: tuple[Any, ...], what: str, value: object, fix: str) -> bytes:
    """Pickle ``message``; a value that cannot be pickled is a ``TypeError`` naming its type."""
    try:
        return _pickle.dumps(message, -1)
    except Exception as exc:
        kind = type(value)
        raise TypeError(
            f"{what} is a {kind.__module__}.{kind.__qualname__}, which cannot be pickled to send "
            f"it to the parent process ({type(exc).__name__}: {exc}); {fix}"
        ) from exc


class Sink:
    """The current job as ``asyncjobs.emit()`` sees it in a worker: each item is one frame.

    A worker is killed on ``stop()``, so ``stop_requested()`` is always False here.
    """

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def emit(self, stream: str, value: Any) -> None:
        what = f"the value emitted to {stream!r}"
        self._channel.send(dumps((ITEM, stream, value), what, value, "emit picklable data"))

    def stop_requested(self) -> bool:
        return False


def install_sink(sink: Sink) -> None:
    """Make ``sink`` the current job of ``asyncjobs._core.context``, now if it is imported, else as
    soon as it is (a job function may import asyncjobs in its body)."""
    context = sys.modules.get(_CONTEXT)
    if context is not None:
        if context.current_sink.get(None) is not sink:
            context.current_sink.set(sink)
    elif not any(isinstance(f, _SinkOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _SinkOnImport(sink))


class _SinkOnImport:
    """A meta path finder that watches only for ``asyncjobs._core.context``; sets the sink in it."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != _CONTEXT:
            return None
        sys.meta_path.remove(self)  # once found, the real finders take it from here
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None and spec.loader is not None:
                _set_sink_after_exec(spec.loader, self._sink)
                return spec
        return None


def _set_sink_after_exec(loader: Any, sink: Sink) -> None:
    run = loader.exec_module

    def exec_module(module: types.ModuleType) -> None:
        run(module)
        module.current_sink.set(sink)

    loader.exec_module = exec_module


def call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], sink: Sink) -> Any:
    """Call ``fn``; stream a generator's items; run an async function with ``asyncio.run``."""
    result = fn(*args, **kwargs)
    if isinstance(result, types.GeneratorType):
        try:
            for item in result:
                sink.emit("output", item)
        finally:
            result.close()
        return None
    if isinstance(result, types.CoroutineType | types.AsyncGeneratorType):
        import asyncio

        return asyncio.run(_drive_async(result, sink))
    return result


async def _drive_async(awaitable: Any, sink: Sink) -> Any:
    if not isinstance(awaitable, types.AsyncGeneratorType):
        return await awaitable
    try:
        async for item in awaitable:
            sink.emit("output", item)
    finally:
        await awaitable.aclose()
    return None


def error_message(exc: BaseException) -> bytes:
    """An exception as data: type name, message, traceback text (without this module's frames)
    and, if it pickles, the exception object itself."""
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    try:
        message = str(exc)
    except Exception:
        message = f"<{name} whose str() failed>"
    try:
        blob: bytes | None = _pickle.dumps(exc, -1)
    except Exception:
        blob = None
    return _pickle.dumps((ERROR, name, message, text, blob), -1)


def run_job(frame: bytes, sink: Sink, home: str) -> bytes:
    """Run one job frame in ``cwd`` with ``env`` applied; return its final message, pickled.

    The directory and the environment are restored afterwards, so the next job of this worker
    starts as the worker did.
    """
    cwd, env, payload = _pickle.loads(frame)
    saved = {key: os.environ.get(key) for key in env} if env else {}
    try:
        if env:
            os.environ.update(env)
        if cwd != home:
            os.chdir(cwd)
        fn, args, kwargs = _pickle.loads(payload)
        install_sink(sink)
        result = call(fn, args, kwargs, sink)
        name = getattr(fn, "__qualname__", None) or repr(fn)
        what = f"the return value of {name}"
        return dumps((RESULT, result), what, result, "return picklable data")
    except BaseException as exc:  # the job's failure (SystemExit too): the worker carries on
        return error_message(exc)
    finally:
        _restore(saved, home)
        _flush()  # a job's print() shows up when the job ends, not when the worker does


def _restore(saved: dict[str, str | None], home: str) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        if os.getcwd() == home:
            return
    except OSError:  # the job's directory was removed under it
        pass
    os.chdir(home)


def prepare(data: dict[str, Any]) -> str:
    """Become like the parent (``sys.path``, ``sys.argv``, directory); return the directory.

    The rest of ``multiprocessing.spawn.prepare`` (above all re-running the parent's main module
    as ``__mp_main__``) is deferred until something looks up a name in ``__main__`` that is not
    there, e.g. unpickling a function defined in the parent's script: most jobs never pay it.
    """
    sys.path[:] = data.pop("sys_path")
    sys.argv[:] = data.pop("sys_argv")
    home: str = data.pop("dir")
    try:
        os.chdir(home)
    except OSError:  # the parent's directory is gone: stay where we are
        home = os.getcwd()
    main = sys.modules["__main__"]
    if (
        vars(main) is globals()
    ):  # run as ``python -m asyncjobs._local.worker``: no hook on ourselves
        _prepare_main(data)
        return home
    for name in [n for n in vars(main) if not n.startswith("__")]:
        delattr(main, name)  # the bootstrap's own names must not shadow the parent's
    if "init_main_from_name" in data or "init_main_from_path" in data:
        setattr(main, "__getattr__", _lazy_main(main, data))  # noqa: B010 - PEP 562 hook
        sys.modules.setdefault("__mp_main__", main)  # what pickles made in a worker refer to
    return home


def _lazy_main(main: types.ModuleType, data: dict[str, Any]) -> Callable[[str], Any]:
    def __getattr__(name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        delattr(main, "__getattr__")
        _prepare_main(data)
        fixed = sys.modules["__main__"]
        if fixed is main:
            raise AttributeError(f"module '__main__' has no attribute {name!r}")
        return getattr(fixed, name)

    return __getattr__


def _prepare_main(data: dict[str, Any]) -> None:
    """The rest of ``multiprocessing.spawn.prepare``: re-run the parent's main as ``__mp_main__``.

    As in multiprocessing's own children, starting a process meanwhile (a script without an
    ``if __name__ == "__main__":`` guard) raises at once instead of starting workers forever.
    """
    from multiprocessing import process, spawn

    current = process.current_process()
    current._inheriting = True  # type: ignore[attr-defined]
    try:
        spawn.prepare(data)
    finally:
        del current._inheriting  # type: ignore[attr-defined]


def _protocol_fds() -> tuple[int, int]:
    """Move the protocol off fds 0 and 1: stdin reads ``/dev/null``, stdout goes to stderr."""
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return rfd, wfd


def main() -> None:
    """Serve jobs until the parent closes our stdin, then exit at once (see ``_exit``)."""
    channel = Channel(*_protocol_fds())
    first = channel.read()
    if first is not None:
        home = prepare(_pickle.loads(first))
        sink = Sink(channel)
        while (frame := channel.read()) is not None:
            message = run_job(frame, sink, home)
            try:
                channel.send(message)
            except BrokenPipeError:
                break
    _exit()


def _exit() -> None:
    """Run the atexit handlers (coverage's, a job's), flush, and skip the interpreter's
    teardown: a fresh worker's exit costs ~1 ms instead of ~3.5 ms. Like multiprocessing's
    forked children, a worker does not wait for threads a job left running."""
    import atexit

    atexit._run_exitfuncs()
    _flush()
    os._exit(0)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # stderr gone or closed by the job: nothing to show it on
            pass


if __name__ == "__main__":
    main()
