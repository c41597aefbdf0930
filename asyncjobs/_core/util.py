"""Small helpers shared by the package: no public constructor, public module names."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import Any, Generic, NoReturn, TypeVar, final

T = TypeVar("T")


class NoPublicConstructor(type):
    """Metaclass for objects that only the library makes (jobs, managers' children).

    ``Job(...)`` raises ``TypeError``; the library calls ``Job._create(...)``.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor; "
            "jobs are made by JobManager.start_thread/start_process/start_command"
        )

    def _create(cls: type[T], *args: Any, **kwargs: Any) -> T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]


def fixup_module_metadata(module_name: str, namespace: dict[str, Any]) -> None:
    """Make re-exported names show as ``asyncjobs.X`` in reprs and tracebacks (as trio does)."""
    for name, obj in list(namespace.items()):
        if name.startswith("_") or not getattr(obj, "__module__", "").startswith("asyncjobs."):
            continue
        if isinstance(obj, type) or callable(obj):
            obj.__module__ = module_name


@final
class Opener(Generic[T]):
    """What ``connect()`` and ``connect_local()`` return: ``await`` it for the session, or use it
    with ``async with``, which closes the session at the end (asyncssh's
    ``async_context_manager`` pattern). Nothing is opened until one of the two happens."""

    def __init__(
        self, open: Callable[[], Awaitable[T]], close: Callable[[T], Awaitable[None]]
    ) -> None:
        self._open = open
        self._close = close
        self._value: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._open().__await__()

    async def __aenter__(self) -> T:
        self._value = await self._open()
        return self._value

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._value is not None:
            await self._close(self._value)
