"""Model composition: encoders -> fusion -> task head."""

from .compose import FusionModel, ModelOutput, build_model, fit_tokenizers, needs_fitting

__all__ = ["FusionModel", "ModelOutput", "build_model", "fit_tokenizers", "needs_fitting"]
