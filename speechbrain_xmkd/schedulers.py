"""Learning-rate schedule of the paper's speaker setting."""


class StepDecay:
    """Multiplies the value by ``factor`` every ``every`` epochs.

    The paper's speaker setting is "reduced by 25% every 3 epochs": epochs
    1-3 at ``initial_value``, 4-6 at ``0.75 x``, and so on. (SpeechBrain's
    ``StepScheduler`` uses ``floor((1 + epoch) / drop)``, which decays after
    epoch 2, not 3.) Called at the end of epoch ``e`` (1-based) it returns
    ``(value used in e, value for e + 1)``, like SpeechBrain's schedulers,
    and holds no state, so resuming needs no checkpoint of it.

    Arguments
    ---------
    initial_value : float
        Value during the first ``every`` epochs.
    factor : float
        Multiplier per step, in (0, 1].
    every : int
        Epochs per step.

    Example
    -------
    >>> schedule = StepDecay(1e-3, factor=0.75, every=3)
    >>> [round(schedule.value(e), 6) for e in range(1, 8)]
    [0.001, 0.001, 0.001, 0.00075, 0.00075, 0.00075, 0.000563]
    >>> schedule(3)
    (0.001, 0.00075)
    """

    def __init__(self, initial_value, factor=0.75, every=3):
        if not 0 < factor <= 1:
            raise ValueError(f"StepDecay: factor must be in (0, 1], got {factor!r}")
        if int(every) != every or every < 1:
            raise ValueError(f"StepDecay: every must be a positive integer, got {every!r}")
        self.initial_value = float(initial_value)
        self.factor = float(factor)
        self.every = int(every)

    def value(self, epoch):
        """The value used during ``epoch`` (1-based)."""
        return self.initial_value * self.factor ** ((max(int(epoch), 1) - 1) // self.every)

    def __call__(self, epoch):
        return self.value(epoch), self.value(epoch + 1)
