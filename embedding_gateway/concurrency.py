"""How many calls one upstream gets at a time, learnt from how its latency responds to load.

Accelerator servers (TEI, vLLM, Infinity) run one batch at a time: a call that arrives while a
batch runs waits for it, then joins the next batch with everything else that waited. Servers
that take one request at a time (Ollama, many small OpenAI-compatible servers) make a second
call wait for the first, too. For both, the best partner is a gateway that holds what arrives
while a call is in flight and sends it, merged, the moment that call returns: more partly
filled calls in flight only split the work into smaller batches. A server with parallel
capacity (several workers or devices behind one address) is different: a second call is served
beside the first, as fast as if alone, and the limit should grow.

Which kind sits behind a ``base_url`` cannot be read from the config, so it is measured, in the
spirit of Netflix's concurrency-limits (``VegasLimit``) and Envoy's adaptive concurrency filter:

- a call's no-load latency is the lowest latency recently seen for calls of its size (inputs,
  in powers of two; a windowed minimum, so that a slower model after a swap is learnt again);
- a call sent while others were in flight is slowed by them by ``latency / no_load``; the
  average over a round of calls at the current limit says whether calls are served side by
  side (about 1) or wait for each other (about 1.5: on average half of the call ahead);
- side by side: allow one more call (while the limit is in use); waiting: allow one fewer;
  one decision per round, so that a step is judged by calls made under it;
- at a limit of one there is nothing to compare, so while requests are being held for the
  limit, a second call is tried now and then, less and less often while the tries fail.

The limit governs calls that could still take more inputs; the batcher fills each call up to
the upstream's batch limits and sends a full call whenever the ceiling allows, since waiting
cannot make it any fuller.
"""

from __future__ import annotations

WINDOW = 64  # samples per minimum window; no-load latency is the min over two windows
SIDE_BY_SIDE = 1.2  # slowdown under which concurrent calls count as served side by side
WAITING = 1.35  # slowdown over which they count as waiting for each other
MIN_SAMPLES = 4  # calls sent beside others that one decision rests on, at the least
FIRST_PROBE_AFTER = 8  # held calls at a limit of one before a second call is tried
LONGEST_PROBE_GAP = 1024


class _WindowedMin:
    __slots__ = ("current", "previous", "samples")

    def __init__(self) -> None:
        self.current = self.previous = float("inf")
        self.samples = 0

    def add(self, value: float) -> None:
        self.samples += 1
        if self.samples % WINDOW == 0:
            self.previous, self.current = self.current, float("inf")
        self.current = min(self.current, value)

    @property
    def value(self) -> float:
        return min(self.current, self.previous)


class AdaptiveLimit:
    def __init__(self, *, maximum: int = 256) -> None:
        self.maximum = max(1, maximum)
        self.limit = 1
        self.slowdown = 1.0  # the last round's average, over calls sent beside others
        self._no_load: dict[int, _WindowedMin] = {}
        self._held = 0  # calls held back by a limit of one since the last try
        self._probe_gap = FIRST_PROBE_AFTER
        self._probing = False
        self._ratios = 0.0  # slowdowns of the calls since the last decision, summed
        self._count = 0
        self._used = 0  # most calls in flight among them

    def _baseline(self, inputs: int) -> float:
        """No-load latency for a call of ``inputs``: its size class, or the nearest smaller
        one seen (an underestimate, which errs towards fewer calls)."""
        size = inputs.bit_length()
        while size >= 0:
            window = self._no_load.get(size)
            if window is not None and window.value != float("inf"):
                return window.value
            size -= 1
        return 0.0

    def observe(self, seconds: float, in_flight: int, inputs: int) -> None:
        """One answered call: its latency, the calls in flight when it was sent (itself
        included) and its inputs."""
        if in_flight <= 1:
            self._no_load.setdefault(inputs.bit_length(), _WindowedMin()).add(seconds)
            return
        baseline = self._baseline(inputs)
        if baseline <= 0:
            return
        self._ratios += seconds / baseline
        self._count += 1
        self._used = max(self._used, in_flight)
        if self._count < max(self.limit, MIN_SAMPLES):
            return  # one decision per round of calls at the current limit
        self.slowdown = self._ratios / self._count
        used, self._ratios, self._count, self._used = self._used, 0.0, 0, 0
        if self.slowdown > WAITING and self.limit > 1:
            self.limit -= 1
            if self._probing:  # the try failed: try again later, and less often
                self._probe_gap = min(2 * self._probe_gap, LONGEST_PROBE_GAP)
            self._probing = False
            self._held = 0
        elif self.slowdown < SIDE_BY_SIDE and 2 * used >= self.limit:
            self.limit = min(self.limit + 1, self.maximum)
            if self._probing:
                self._probing = False
                self._probe_gap = FIRST_PROBE_AFTER

    def held(self) -> None:
        """A call that could have gone out was held back by the limit."""
        if self.limit != 1 or self.maximum < 2:
            return
        self._held += 1
        if self._held >= self._probe_gap:
            self._held = 0
            self._probing = True
            self._ratios, self._count, self._used = 0.0, 0, 0
            self.limit = 2


class FixedLimit:
    """A configured ``max_concurrency``: the bound, whatever the latency does."""

    def __init__(self, limit: int) -> None:
        self.limit = self.maximum = limit

    def observe(self, seconds: float, in_flight: int, inputs: int) -> None:
        return None

    def held(self) -> None:
        return None
