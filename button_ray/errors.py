"""The one exception family of button_ray: every error it raises on purpose is a
:class:`ButtonRayError`, and where it ends is decided by which branch it is on.

::

    ButtonRayError
    ├── UserError              the user can fix it; the CLI prints it in one sentence, exit 2
    │   ├── ConfigError        a config file, an override, a prompt template
    │   ├── InputError         the scenario input
    │   ├── OutputError        the output location
    │   ├── TargetError        a target count the scenario pool cannot give
    │   ├── ClusterFitError    the cluster cannot hold what the config reserves (plan)
    │   ├── EngineStartError   replicas that cannot be placed or cannot start an engine
    │   │   └── EmbeddedModelError   the embedded model is not installed or cannot be prepared
    │   └── ModelFetchError    `fetch-model` cannot download a model into the cache
    ├── LLMUnavailableError    no replica answers; the job stops, the CLI exits 3, a rerun resumes
    ├── RecordError            one record's problem: retried, then the record is rejected;
    │   ├── ParseError         never reaches the CLI
    │   └── LLMRequestError
    ├── ReplicaFatalError      a replica's engine is dead: the replica exits, Ray replaces it
    └── ReplicaNotReadyError   a replica's engine is still (re)loading: the request goes to a ready one

A new error joins the branch whose handling it needs; the CLI catches the branch, not a
list of classes, so a new :class:`UserError` is a sentence on the terminal, not a
traceback.
"""

from __future__ import annotations


class ButtonRayError(Exception):
    """The base of every error button_ray raises on purpose."""


class UserError(ButtonRayError):
    """Something the user can fix (config, input, output, cluster fit, engine start).

    The message is one sentence that names what to fix; the CLI prints it and exits 2.
    """


class ConfigError(UserError):
    """A config file, an override or a prompt template that cannot be used (field errors
    of a readable config are pydantic ``ValidationError``\\ s, reported the same way)."""


class InputError(UserError):
    """The scenario input cannot be read; the message names the file, the line and the problem."""


class OutputError(UserError):
    """The output location cannot be used (unwritable, or belongs to another config)."""


class TargetError(UserError):
    """A target count of accepted trajectories the scenario pool cannot give at the
    configured slots, even if every item were accepted."""


class ClusterFitError(UserError):
    """The cluster cannot hold every replica and stage actor the config reserves; the
    message names what is missing (``button-ray plan``, before any engine starts)."""


class EngineStartError(UserError):
    """A pool's replicas could not be placed or could not start their engines (the message says which)."""


class EmbeddedModelError(EngineStartError):
    """The embedded model is not installed or cannot be prepared."""


class ModelFetchError(UserError):
    """A model cannot be downloaded into the Hugging Face cache (hub unreachable, token
    missing or refused); the message names HF_HOME and HF_TOKEN."""


class LLMUnavailableError(ButtonRayError):
    """No replica could serve a request within the failover budget: the job stops (not
    the records' fault, so none is failed for it) and the same command resumes later."""


class RecordError(ButtonRayError):
    """A problem of one record: the step is retried, then the record is rejected with a
    reason. Handled inside the method; never reaches the CLI."""


class ParseError(RecordError):
    """Output could not be used; ``reason`` is a machine-readable code.

    ``malformed=True`` (the default) means the text could not be parsed at all (counted
    in the unparseable share); ``False`` means it parsed but broke a rule of the method
    (e.g. an unknown function name, a "no" verdict).
    """

    def __init__(self, reason: str, detail: str = "", malformed: bool = True) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.malformed = malformed


class LLMRequestError(RecordError):
    """The request itself is invalid (prompt longer than the context, ...).

    The record is rejected, the request is not retried, the replica lives on.
    """


class ReplicaFatalError(ButtonRayError):
    """The replica's engine is dead; the replica exits so Ray can replace it."""


class ReplicaNotReadyError(ButtonRayError):
    """The replica's engine is still (re)loading and the caller asked not to wait for it:
    the pool client routes the request to a ready replica. Never reaches the CLI."""


def ours(exc: BaseException) -> BaseException:
    """A Ray task error whose cause is one of ours, as that cause (the CLI prints its one
    sentence, not a remote traceback); any other error as it is."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, ButtonRayError) else exc
