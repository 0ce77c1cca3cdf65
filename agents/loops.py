"""Loops that feed the learner rollouts: synchronous (act, then learn) or asynchronous (actor threads).

Both expose the same seam, so the learner never knows which one it is fed by:

    loop.publish(params, hparams, version)   # the learner's newest parameters
    batch = loop.next()                      # a Batch: rollout, ended episodes, env steps, lag

In the asynchronous loop each actor thread owns its env and keeps acting with the newest
parameters it has seen, putting rollouts into a bounded queue (backpressure: actors wait when the
learner falls behind). A rollout's ``lag`` is how many learner updates happened between the
parameters that collected it and the ones it is learned with; V-trace corrects for it. Threads
suffice because env stepping (numba, envpool) and torch kernels release the GIL.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, NamedTuple

from rlmeta.agents.actor import Actor
from rlmeta.rollout import Rollout


class Batch(NamedTuple):
    """One rollout for the learner and what came with it."""

    rollout: Rollout
    episodes: list[dict[str, float]]  # episodes that ended while collecting it
    steps: int  # env steps it holds (T * B)
    lag: int  # learner updates since the parameters that collected it
    actor: int  # which actor collected it


class SyncLoop:
    """Collects each rollout on demand with the newest parameters (lag 0)."""

    def __init__(self, actor: Actor):
        self.actor = actor
        self.params: dict | None = None
        self.hparams: dict = {}

    def publish(self, params: dict, hparams: dict, version: int) -> None:
        """Use ``params`` for the next rollouts."""
        self.params, self.hparams = params, hparams

    def next(self) -> Batch:
        """Collect one rollout now."""
        if self.params is None:
            raise RuntimeError("publish parameters before asking for a rollout")
        rollout = self.actor.collect(self.params, self.hparams)
        return Batch(rollout, self.actor.pop_episodes(), rollout.num_steps * rollout.num_envs, 0, 0)

    def close(self) -> None:
        """Close the actor's env."""
        self.actor.env.close()


class AsyncLoop:
    """``num_actors`` threads act in their own envs and fill a queue of at most ``queue_size`` rollouts."""

    def __init__(self, make_actor: Callable[[int], Actor], num_actors: int, queue_size: int, timeout: float = 600.0):
        if num_actors < 1 or queue_size < 1:
            raise ValueError(f"num_actors and queue_size must be >= 1, got {num_actors} and {queue_size}")
        self.actors = [make_actor(i) for i in range(num_actors)]
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.timeout = timeout
        self._latest: tuple[dict, dict, int] | None = None
        self._published = threading.Event()
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self.version = 0
        self.threads = [
            threading.Thread(target=self._act, args=(i,), name=f"rlmeta-actor-{i}", daemon=True)
            for i in range(num_actors)
        ]
        for thread in self.threads:
            thread.start()

    def publish(self, params: dict, hparams: dict, version: int) -> None:
        """Make ``params`` (never modified in place afterwards) the actors' newest parameters."""
        self._latest = (params, hparams, version)
        self.version = version
        self._published.set()

    def _act(self, index: int) -> None:
        actor = self.actors[index]
        try:
            self._published.wait()
            while not self._stop.is_set():
                params, hparams, version = self._latest  # type: ignore[misc]
                rollout = actor.collect(params, hparams)
                batch = (rollout, actor.pop_episodes(), rollout.num_steps * rollout.num_envs, version, index)
                while not self._stop.is_set():
                    try:
                        self.queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # noqa: BLE001 - handed to the learner thread
            self._errors.append(error)
            self._stop.set()

    def next(self) -> Batch:
        """The oldest waiting rollout; an actor's exception is re-raised here."""
        waited = 0.0
        while True:
            if self._errors:
                raise RuntimeError(f"an actor thread failed: {self._errors[0]!r}") from self._errors[0]
            try:
                rollout, episodes, steps, version, index = self.queue.get(timeout=0.1)
                return Batch(rollout, episodes, steps, self.version - version, index)
            except queue.Empty:
                waited += 0.1
                if waited > self.timeout:
                    raise RuntimeError(f"no rollout arrived from the actors in {self.timeout:.0f} s") from None

    def close(self) -> None:
        """Stop the threads and close their envs (idempotent)."""
        self._stop.set()
        self._published.set()
        for thread in self.threads:
            thread.join(timeout=30)
        for actor in self.actors:
            actor.env.close()
