"""Gradient refinement of coefficients: `fit` (each image on its own) and `fit_set` (one
identity for a set of photos). `api` holds the public functions and their checks, `init`
the closed-form pose and light, `objective` what one step evaluates, `loop` the stages."""

from jaxface.fit.api import (FitConfig, FitResult, LearningRates, TemporalWeights, average_identity, check_inputs,
                             face_loss, fit, fit_set)
from jaxface.fit.loop import BAD_INPUT, DIVERGED, GROUPS, NONFINITE

__all__ = ["BAD_INPUT", "DIVERGED", "GROUPS", "NONFINITE", "FitConfig", "FitResult", "LearningRates", "TemporalWeights",
           "average_identity", "check_inputs", "face_loss", "fit", "fit_set"]
