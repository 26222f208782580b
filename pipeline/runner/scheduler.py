"""The driver's pull scheduler: a fixed pool of tokenizer actors, each holding at most
`shards_per_actor` shards (default 1 here, 2 from the job); an actor that finishes one gets the
next shard from the queue (no static assignment, so a slow node only slows its own shards). With
2, an actor always has its next shard queued: it streams and decodes it while encoding the current
one (see shard_task.py), so neither the round trip to the driver nor a shard's start-up and
write leave the encoder idle.

Failures: a shard whose attempt fails (unreadable URL, actor killed mid-shard, node lost, out of
memory, or still running after `shard_timeout_s`) goes back to the front of the queue until it
has failed `max_retries + 1` times, then it is reported. A dead (or overdue) actor is replaced by
a fresh one. Re-running a shard is safe whatever bytes each attempt encodes, and even when a
"dead" actor is still writing: only the attempt that creates the manifest is ever published
(sinks/manifest.py).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from pipeline.runner.actor import make_actor_class
from pipeline.runner.config import JobSpec
from pipeline.runner.shard_task import ShardResult
from pipeline.sinks.manifest import COMMITTED_OTHER
from pipeline.sources.listing import Shard

POLL_S = 0.5
WAITING_NOTE_S = 60.0  # how often a job whose actors are not placed yet says so


@dataclass
class ActorSlot:
    index: int
    handle: Any
    ready_ref: Any
    created: float = field(default_factory=time.perf_counter)
    info: dict[str, Any] | None = None
    ready_at: float | None = None
    running: int = 0               # shards in flight on this actor
    busy_since: float | None = None
    busy_s: float = 0.0            # time with at least one shard in flight
    shards: int = 0
    images: int = 0
    dead: bool = False
    retired_at: float | None = None

    @property
    def busy(self) -> bool:
        return self.running > 0

    def started_one(self, now: float) -> None:
        if self.running == 0:
            self.busy_since = now
        self.running += 1

    def finished_one(self, now: float) -> None:
        self.running = max(0, self.running - 1)
        if self.running == 0 and self.busy_since is not None:
            self.busy_s += now - self.busy_since
            self.busy_since = None


@dataclass
class ScheduleOutcome:
    results: dict[str, ShardResult] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    attempts_failed: int = 0
    actor_deaths: int = 0
    slots: list[ActorSlot] = field(default_factory=list)
    startup_errors: list[str] = field(default_factory=list)
    first_dispatch_at: float | None = None   # perf_counter() of the first shard handed out
    last_result_at: float | None = None      # ... and of the last result received
    timeouts: int = 0                        # attempts stopped by --shard-timeout-s
    # Shards whose attempt found the shard already committed by another attempt with other bytes
    # (non-reproducible encoding: bf16, another GPU type): done, the first committed encoding holds.
    committed_by_other_bytes: list[str] = field(default_factory=list)


class ShardScheduler:
    def __init__(self, spec: JobSpec, shards: list[Shard], *, num_actors: int, gpus_per_actor: float,
                 cpus_per_actor: float, max_retries: int, reporter: Any = None,
                 on_progress: Callable[[int, int], None] | None = None,
                 runtime_env: dict[str, Any] | None = None, startup_wait_s: float = 0.0,
                 shards_per_actor: int = 1, actor_start_timeout_s: float = 1800.0,
                 shard_timeout_s: float = 0.0) -> None:
        self.spec = spec
        self.queue: collections.deque[Shard] = collections.deque(shards)
        self.num_actors = max(1, min(num_actors, len(shards)))
        self.cpus_per_actor = cpus_per_actor
        self.gpus_per_actor = gpus_per_actor
        self.shards_per_actor = max(1, int(shards_per_actor))
        self.actor_class = make_actor_class(gpus_per_actor, cpus_per_actor, runtime_env,
                                            max_concurrency=self.shards_per_actor)
        self.max_retries = max_retries
        self.reporter = reporter
        self.on_progress = on_progress or (lambda done, failed: None)
        self.attempts: dict[str, int] = collections.Counter()
        self.errors: dict[str, list[str]] = collections.defaultdict(list)
        self.outcome = ScheduleOutcome()
        self.slots: list[ActorSlot] = []
        self.in_flight: dict[Any, tuple[ActorSlot, Shard, float]] = {}
        self.startup_failures: list[str] = []
        self.startup_wait_s = startup_wait_s
        self.actor_start_timeout_s = actor_start_timeout_s
        self.shard_timeout_s = float(shard_timeout_s or 0.0)
        self.started = time.perf_counter()
        self.next_waiting_note = self.started + WAITING_NOTE_S

    # ------------------------------------------------------------------ actors
    def _spawn(self, index: int) -> ActorSlot:
        handle = self.actor_class.remote(self.spec, self.cpus_per_actor, self.reporter)
        slot = ActorSlot(index=index, handle=handle, ready_ref=handle.info.remote())
        self.slots.append(slot)
        return slot

    def _retire(self, slot: ActorSlot, replace: bool) -> None:
        slot.dead = True
        slot.retired_at = time.perf_counter()
        try:
            ray.kill(slot.handle, no_restart=True)
        except Exception:
            pass
        if replace and self.queue_or_busy():
            self._spawn(slot.index)

    def live_slots(self) -> list[ActorSlot]:
        return [s for s in self.slots if not s.dead]

    def queue_or_busy(self) -> bool:
        return bool(self.queue) or bool(self.in_flight)

    # ------------------------------------------------------------------ main loop
    def run(self) -> ScheduleOutcome:
        for i in range(self.num_actors):
            self._spawn(i)
        try:
            while self.queue or self.in_flight:
                self._dispatch()
                if not self.live_slots():
                    self._give_up("no tokenizer actor could start: " + "; ".join(self.startup_failures[-3:]))
                    break
                if not self._any_actor_started() and self._waited_too_long():
                    break
                waiting = {s.ready_ref: s for s in self.live_slots() if s.info is None}
                refs = list(self.in_flight) + list(waiting)
                done, _ = ray.wait(refs, num_returns=1, timeout=POLL_S)
                for ref in done:
                    if ref in waiting:
                        self._on_ready(waiting[ref])
                    else:
                        self._on_result(ref)
                self._stop_overdue()
                self.on_progress(len(self.outcome.results), len(self.outcome.failed))
        finally:
            for slot in self.live_slots():
                self._retire(slot, replace=False)
        self.outcome.slots = self.slots
        self.outcome.startup_errors = list(self.startup_failures)
        return self.outcome

    def _any_actor_started(self) -> bool:
        return any(s.info is not None for s in self.slots)

    def _waited_too_long(self) -> bool:
        """No actor has started yet: say so now and then, and give up after the timeout (Ray keeps
        an unplaceable actor pending forever: a full cluster would otherwise hang the job)."""
        now = time.perf_counter()
        waited = now - self.started
        if waited > self.actor_start_timeout_s:
            self._give_up(f"no tokenizer actor was placed and started within {self.actor_start_timeout_s:.0f} s "
                          f"(each needs {self.cpus_per_actor} CPU, {self.gpus_per_actor} GPU; cluster free now: "
                          f"{_free_resources()}); free the cluster or raise --actor-start-timeout-s")
            return True
        if now >= self.next_waiting_note:
            self.next_waiting_note = now + WAITING_NOTE_S
            print(f"[scaletok tokenize] waiting {waited:.0f} s for tokenizer actors to be placed "
                  f"(cluster free now: {_free_resources()})", flush=True)
        return False

    def _dispatch(self) -> None:
        if time.perf_counter() - self.started < self.startup_wait_s and \
                any(s.info is None for s in self.live_slots()):
            return  # still waiting for the whole pool (--startup-wait-s)
        # Level by level: every idle actor gets a shard before any actor gets its second one.
        for level in range(1, self.shards_per_actor + 1):
            for slot in self.live_slots():
                if not self.queue:
                    return
                if slot.info is not None and slot.running < level:
                    shard = self.queue.popleft()
                    ref = slot.handle.process.remote(shard, self.attempts[shard.name])
                    now = time.perf_counter()
                    if self.outcome.first_dispatch_at is None:
                        self.outcome.first_dispatch_at = now
                    slot.started_one(now)
                    self.in_flight[ref] = (slot, shard, now)

    def _on_ready(self, slot: ActorSlot) -> None:
        try:
            slot.info = ray.get(slot.ready_ref)
            slot.ready_at = time.perf_counter()
        except RayError as e:
            self.startup_failures.append(_short(e))
            self.outcome.actor_deaths += 1
            # An actor that cannot even start is replaced while others can; a systematic
            # failure (bad checkpoint on every node) stops after a few tries.
            self._retire(slot, replace=len(self.startup_failures) < 2 * self.num_actors)
            return
        if slot.info.get("fingerprint") != self.spec.tokenizer_fingerprint:
            self._retire(slot, replace=False)
            raise RuntimeError(f"actor on {slot.info.get('host')} built a different tokenizer (fingerprint "
                               f"{slot.info.get('fingerprint')} vs {self.spec.tokenizer_fingerprint} on the driver): "
                               "are the checkpoint files or library versions the same on every node?")

    def _on_result(self, ref: Any) -> None:
        slot, shard, started = self.in_flight.pop(ref)
        self.outcome.last_result_at = time.perf_counter()
        slot.finished_one(self.outcome.last_result_at)
        actor_died = False
        try:
            result: ShardResult = ray.get(ref, timeout=60)
        except (RayActorError, GetTimeoutError) as e:
            actor_died = True
            result = ShardResult(shard=shard.name, ok=False, error=f"actor died mid-shard: {_short(e)}")
        except RayError as e:
            result = ShardResult(shard=shard.name, ok=False, error=_short(e))
        self._account(slot, shard, result)
        if actor_died and not slot.dead:  # its other in-flight shards fail too: one death, one replacement
            self.outcome.actor_deaths += 1
            self._retire(slot, replace=True)  # after the shard is back in the queue

    def _stop_overdue(self) -> None:
        """An attempt running longer than --shard-timeout-s (a hung read, a hung actor) fails: its
        actor is killed and replaced; the actor's other shards go back to the queue uncounted."""
        if self.shard_timeout_s <= 0:
            return
        now = time.perf_counter()
        overdue = [(ref, slot, shard) for ref, (slot, shard, started) in self.in_flight.items()
                   if now - started > self.shard_timeout_s]
        for ref, slot, shard in overdue:
            if ref not in self.in_flight:
                continue  # went back to the queue with an earlier overdue shard of the same actor
            self.in_flight.pop(ref)
            slot.finished_one(now)
            self.outcome.timeouts += 1
            self._account(slot, shard, ShardResult(
                shard=shard.name, ok=False, error=f"attempt timed out after {self.shard_timeout_s:.0f} s "
                                                  f"(--shard-timeout-s); its actor was replaced"))
            for other in [r for r, (s, _, _) in self.in_flight.items() if s is slot]:
                _, other_shard, _ = self.in_flight.pop(other)
                slot.finished_one(now)
                self.queue.appendleft(other_shard)
            if not slot.dead:
                self.outcome.actor_deaths += 1
                self._retire(slot, replace=True)

    def _account(self, slot: ActorSlot, shard: Shard, result: ShardResult) -> None:
        if result.ok:
            slot.shards += 1
            slot.images += result.images_ok
            self.outcome.results[shard.name] = result
            if result.commit == COMMITTED_OTHER:
                self.outcome.committed_by_other_bytes.append(shard.name)
            return
        self.outcome.attempts_failed += 1
        self.attempts[shard.name] += 1
        self.errors[shard.name].append(result.error or "unknown error")
        if not result.retryable:
            self.outcome.failed[shard.name] = result.error or "failed"
        elif self.attempts[shard.name] > self.max_retries:
            self.outcome.failed[shard.name] = (f"{self.attempts[shard.name]} attempts failed; last: "
                                               f"{self.errors[shard.name][-1]}")
        else:
            self.queue.appendleft(shard)

    def _give_up(self, reason: str) -> None:
        while self.queue:
            self.outcome.failed[self.queue.popleft().name] = reason


def _free_resources() -> dict[str, float]:
    try:
        return {k: v for k, v in sorted(ray.available_resources().items()) if k in ("CPU", "GPU")}
    except Exception:
        return {}


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]
