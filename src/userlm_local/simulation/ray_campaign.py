"""A campaign spread over a Ray cluster (``simulate --ray [ADDRESS]``).

The intents x trials are dealt to actors (``ConversationWorker``), each of which builds the
campaign's models once from simulate's own options and runs one conversation at a time; every
finished conversation comes back to this process, the one writer, which appends it to the locked
transcript file: the same JSONL, ``--resume`` and no-duplicate guarantees as a local run.  An
actor that dies (a node lost, an OOM kill) fails its in-flight conversation with
``RayActorError``: that conversation goes back in the queue and a fresh actor takes the dead
one's place, so every conversation is written exactly once.  ``ray`` is imported only here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from collections import deque
from typing import Callable

from ..runtime.scheduler import Scheduler
from ..util.errors import UserError
from .build import CampaignSpec, build_campaign
from .campaign import Stats, pending_jobs

RESTARTS = 8  # actors replaced at most this many times in one run


class ConversationWorker:
    """The body of a Ray actor: the models, loaded once, and one conversation per call."""

    def __init__(self, spec: CampaignSpec):
        self.campaign = build_campaign(spec)
        self.scheduler = None
        if not self.campaign.remote:
            self.scheduler = Scheduler(self.campaign.backend)

    def converse(self, intent, trial: int) -> dict:
        return self.campaign.conversation(self.scheduler, intent, trial)

    def setup(self) -> dict:
        return self.campaign.setup()

    def pid(self) -> int:
        return os.getpid()


class RayCampaign:
    """``campaign.Runner``: ``Campaign``'s contract, with the conversations run by Ray actors."""

    forced = False  # Ctrl-C is Ray's: the driver leaves at the first one
    on_force = None

    def __init__(self, spec: CampaignSpec, *, address: str | None = None, actors: int | None = None,
                 after_record: Callable[["RayCampaign", dict], None] | None = None,
                 worker: type = ConversationWorker, worker_args: tuple = ()):
        """``worker``: the actors' class, built as ``worker(spec, *worker_args)`` (``eval`` puts the
        grader in front of the campaign's assistant there: ``evaluation.extrinsic.EvalWorker``)."""
        try:
            import ray
        except ImportError:
            raise UserError("--ray needs the 'ray' extra: pip install 'userlm-local[ray]'") from None
        self.ray = ray
        self.spec = spec if spec.threads else dataclasses.replace(spec, threads=1)
        self.address, self.n_actors = address, actors
        self.after_record = after_record
        self.worker_class, self.worker_args = worker, worker_args
        self.stats = Stats()
        self.actors: list = []
        self.restarts = 0
        self._setup: dict | None = None

    def _start(self):
        ray = self.ray
        if self.actors:
            return
        if not ray.is_initialized():
            handler = signal.getsignal(signal.SIGTERM)
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False, **({} if self.address else {"num_cpus": os.cpu_count()}))
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(f"--ray {self.address or ''}: cannot reach the Ray cluster ({exc})".strip()) from None
            if callable(handler) and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, handler)  # Ray's core worker put its own in its place
        n = self.n_actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.worker = ray.remote(num_cpus=0.5)(self.worker_class)
        self.actors = [self.worker.remote(self.spec, *self.worker_args) for _ in range(n)]

    def setup(self) -> dict:
        """What every record shares (``Campaign.setup``), from the first actor: the models it built
        are checked here, before any conversation, so a configuration error is one line at once."""
        if self._setup is None:
            self._start()
            from ray.exceptions import RayActorError

            try:
                self._setup = self.ray.get(self.actors[0].setup.remote())
            except RayActorError as exc:
                raise _user_error(exc) or exc from None
        return self._setup

    def jobs(self, intents, done: set) -> list:
        return pending_jobs(intents, self.spec.trials, self.spec.seed, done, self.stats)

    def record(self, writer, rec: dict) -> None:
        writer.write(rec)
        self.stats.finished(rec)
        s = self.stats  # the turns were counted on the actors: add them up from the record
        s.turns += sum(1 for m in rec["messages"] if m["role"] == "user")
        s.add_record(rec["usage"])

    def run(self, intents, writer, *, progress=None, method: str = "converse") -> Stats:
        """Every (intent, trial) not yet in ``writer``, each by an actor's ``method``: ``converse``, or
        another method of the worker class that returns a record (eval's single-turn baseline), whose
        records are written and counted in a ``Stats`` of their own, returned.  The actors end with the
        run; a later run starts fresh ones."""
        ray = self.ray
        from ray.exceptions import RayActorError, RayTaskError

        own = method == "converse"
        stats = self.stats if own else Stats()
        queue = deque(pending_jobs(intents, self.spec.trials, self.spec.seed, writer.done, stats))
        self.setup()
        self._start()  # again after an earlier run, which ended its actors
        idle, inflight = list(self.actors), {}
        try:
            while queue or inflight:
                while queue and idle:
                    actor, job = idle.pop(), queue.popleft()
                    inflight[getattr(actor, method).remote(*job)] = (actor, job)
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
                for ref in ready:
                    actor, job = inflight.pop(ref)
                    try:
                        rec = ray.get(ref)
                    except RayActorError as exc:
                        if _user_error(exc):  # a fresh actor would build the same models and fail alike
                            raise _user_error(exc) from None
                        queue.appendleft(job)  # rerun elsewhere; a fresh actor replaces the dead one
                        idle.append(self._replace(actor, exc))
                        continue
                    except RayTaskError as exc:  # the conversation itself raised: a bug, said once
                        raise RuntimeError(f"conversation {job[0].id}/{job[1]} failed on a Ray actor: "
                                           f"{exc.cause if hasattr(exc, 'cause') else exc}") from None
                    idle.append(actor)
                    if rec is not None and own:
                        self.record(writer, rec)
                        if self.after_record:
                            self.after_record(self, rec)
                    elif rec is not None:
                        writer.write(rec)
                        stats.finished(rec)
                    if progress:
                        progress(stats)
        finally:
            for a in self.actors:
                ray.kill(a)
            self.actors = []
        return stats

    def abandon(self) -> None:
        """The process is about to exit mid-run (SIGTERM): stop the actors and the Ray instance this
        process started, which would otherwise outlive it."""
        with contextlib.suppress(Exception):
            for a in self.actors:
                self.ray.kill(a)
            self.ray.shutdown()

    def _replace(self, dead, exc: Exception):
        self.restarts += 1
        if self.restarts > RESTARTS:
            why = str(exc).strip().splitlines()
            raise UserError(f"Ray actors died {self.restarts} times; stopping (the finished conversations are "
                            f"written; rerun with --resume); last: {why[-1] if why else type(exc).__name__}")
        print(f"a Ray actor died; its conversation goes to a fresh actor ({self.restarts} so far)",
              file=sys.stderr)
        time.sleep(0.1)
        fresh = self.worker.remote(self.spec, *self.worker_args)
        self.actors = [fresh if a is dead else a for a in self.actors]
        return fresh


def _user_error(exc) -> UserError | None:
    """The UserError an actor's start raised (a missing model, an unreachable endpoint), if that is
    why it died: it is the user's to fix, not a lost node to replace."""
    if not getattr(exc, "actor_init_failed", False):
        return None
    marker = "UserError: "
    lines = [line for line in str(exc).splitlines() if marker in line]
    return UserError(lines[-1].split(marker, 1)[1].strip()) if lines else None
