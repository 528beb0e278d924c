"""Conditional latent diffusion surrogate (paper 000's forward model): synthesis conditions -> SEM tiles."""
from models.surrogate.conditioning import (ConditionEncoder, ConditionInputError, ConditionSchema,
                                           OutOfDomainWarning)
from models.surrogate.model import (MAGNIFICATIONS, LatentDiffusionSurrogate, SurrogateConfig,
                                    SurrogateModelError)

__all__ = ["ConditionEncoder", "ConditionInputError", "ConditionSchema", "OutOfDomainWarning", "MAGNIFICATIONS",
           "LatentDiffusionSurrogate", "SurrogateConfig", "SurrogateModelError"]
