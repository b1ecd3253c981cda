"""Uncertainty monitor: predicted per-atom force-error norm sigma_i (eV/Å) of the running model.

Score: :class:`platoscope.uncertainty.ForceErrorModel` on the frame's own features (the hooked
layer's raw embeddings) and forces: no extra model call (``uses_forces``: ``platoscope
monitor`` computes the model's forces in the pass that gives the features). Threshold:
``max_force_error`` (eV/Å; default 0.5). The estimator is the shipped calibration of the
running model (fitted on mlearn Li/Si training) or the npz given as ``--uncertainty-model``
(made by ``platoscope calibrate``). Measured ranking and coverage: docs/detection.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from platoscope.errors import ConfigError, InputError
from platoscope.monitors.base import Frame, Monitor
from platoscope.monitors.registry import MonitorOption, register_monitor
from platoscope.uncertainty import BankMismatchError, ForceErrorModel

DEFAULT_MAX_FORCE_ERROR = 0.5  # eV/Å


def _positive(value: Any) -> str | None:
    """Why ``value`` is no force-error threshold (None: it is one; None means the default)."""
    if value is None or float(value) > 0:
        return None
    return f"must be > 0 eV/Å, got {value}"


def _shipped(backend: Any, bank: Any) -> ForceErrorModel:
    """The shipped calibration of ``backend`` with the bank it was fitted against: the run's
    bank when it is that one, else the model's default bank (a ``--reference`` bank, e.g. one
    extended with the user's structures, serves the other monitors; sigma's feature-distance
    term stays on the bank its coefficients were fitted with)."""
    try:
        return ForceErrorModel.default(backend, bank)
    except BankMismatchError:
        pass
    from platoscope.anchors import AnchorSet
    from platoscope.reference import default_bank

    return ForceErrorModel.default(backend, default_bank(backend, AnchorSet.default()))


@register_monitor
class UncertaintyMonitor(Monitor):
    """Flags atoms whose predicted force error sigma_i (eV/Å) exceeds ``max_force_error``.

    estimator: a fitted ForceErrorModel of the running model and its bank.
    """

    name = "uncertainty"
    units = "eV/Å"
    uses_forces = True  # sigma is calibrated on the running model's own |F|
    options = (
        MonitorOption("max_force_error", float, None,
                      f"Uncertainty monitor threshold on the predicted per-atom force error "
                      f"(eV/Å; default {DEFAULT_MAX_FORCE_ERROR})",
                      aliases=("--max-force-error",), check=_positive),
        MonitorOption("model", str, None,
                      "Force-error model npz for the uncertainty monitor (from platoscope "
                      "calibrate); default: the running model's shipped calibration"),
    )

    @classmethod
    def from_spec(cls, arg: str, context: Any) -> UncertaintyMonitor:
        """The running model's bank (``context.bank``) and backend; options above."""
        if arg:
            raise ConfigError(f"the uncertainty monitor takes no argument, got {arg!r}")
        if context.bank is None or getattr(context.bank, "embeddings", None) is None:
            raise ConfigError("the uncertainty monitor needs the running model's reference "
                              "bank with raw embeddings")
        opts = context.options_for(cls)
        if opts["model"]:
            est = ForceErrorModel.load(opts["model"], context.bank)
            if context.backend is not None:
                est.check_backend(context.backend)
        elif context.backend is None:
            raise ConfigError("the uncertainty monitor needs the running model (for its "
                              "shipped calibration) or --uncertainty-model model.npz")
        else:
            est = _shipped(context.backend, context.bank)
        return cls(est, max_force_error=opts["max_force_error"], **context.common)

    def __init__(self, estimator: ForceErrorModel, *, max_force_error: float | None = None,
                 **kwargs: Any):
        if kwargs.get("threshold") is not None:  # the base class's name for the same number
            if max_force_error is not None and kwargs["threshold"] != max_force_error:
                raise InputError(f"threshold {kwargs['threshold']!r} and max_force_error "
                                 f"{max_force_error!r} name the same setting: give one")
            max_force_error = kwargs.pop("threshold")
        mfe = DEFAULT_MAX_FORCE_ERROR if max_force_error is None else float(max_force_error)
        if _positive(mfe):
            raise InputError(f"max_force_error {_positive(mfe)}")
        kwargs["threshold"] = mfe
        super().__init__(**kwargs)
        if estimator.params_ is None:
            raise InputError("the uncertainty monitor needs a fitted ForceErrorModel")
        self.estimator = estimator
        self.max_force_error = mfe

    def start(self, frame: Frame) -> None:
        """Refuse a running model, weights or layer other than the estimator's."""
        backend = getattr(frame.calc, "backend", None)
        if backend is not None:
            self.estimator.check_backend(backend)

    def score(self, frame: Frame) -> np.ndarray:
        """(N,) predicted force-error norm sigma_i in eV/Å from the frame's embeddings (N, D),
        forces (N, 3) and, for the local-force-scale term, positions."""
        if frame.embeddings is None:
            raise InputError("the uncertainty monitor needs the frame's raw embeddings "
                             "(the PlatonicCalculator's results)")
        if frame.forces is None:
            raise InputError("the frame holds no forces: sigma is predicted from the running "
                             "model's forces, which md/relax compute and `platoscope monitor` "
                             "computes unless --forces file (which reads them from the "
                             "trajectory): drop --forces file, or write the trajectory with "
                             "the model's forces")
        return self.estimator.predict(frame.embeddings, frame.forces, frame.atoms.numbers,
                                      atoms=frame.atoms)

    def settings(self) -> dict[str, Any]:
        from ase.data import chemical_symbols

        est = self.estimator
        return {**super().settings(), "max_force_error": self.max_force_error,
                "estimator": dict(est.provenance_), "form": est.form,
                "params": dict(est.params_), "c": est.c_, "k": est.k, "quantile": est.quantile,
                "terms": list(est.terms), "radius_A": est.radius,
                "element_offsets": {chemical_symbols[z]: v for z, v in est.offsets_.items()},
                "unseen_element_offset": est.unseen}

    def summary(self) -> dict[str, Any]:
        from ase.data import chemical_symbols

        s = super().summary()
        est = self.estimator
        s.update(elements_not_in_reference=[chemical_symbols[z]
                                            for z in est.unknown_elements_],
                 elements_not_in_calibration=[chemical_symbols[z]
                                              for z in est.uncalibrated_elements_],
                 uncalibrated_element_offsets={
                     chemical_symbols[z]: v
                     for z, v in est.unseen_offsets(est.uncalibrated_elements_).items()},
                 elements_without_prior=[chemical_symbols[z] for z in est.uncalibrated_elements_
                                         if est.unseen == "prior" and z not in est.prior_])
        return s
