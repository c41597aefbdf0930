"""Small helpers shared by the package: no public constructor, public module names."""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar

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
