"""Reconstruction: the generative fallback (low-level -> Versatile Diffusion img2img -> best-of-N),
retrieval-augmented. See ``pipeline`` for the numbered steps and ``writer`` for what OUT holds.

    from mindsearch.reconstruct import reconstruct, ReconstructionPipeline, ReconstructionSettings

Importing this package is light: torch and diffusers load when a pipeline runs.
"""

from mindsearch.reconstruct.api import reconstruct
from mindsearch.reconstruct.components import DiffusionComponents, check_conditioning_space, save_random_tiny_vae
from mindsearch.reconstruct.diffusion import img2img_timesteps
from mindsearch.reconstruct.pipeline import (Candidate, ReconstructionOutput, ReconstructionPipeline,
                                             ReconstructionSettings, TrialReconstruction)
from mindsearch.reconstruct.ranking import best_of

__all__ = ["reconstruct", "ReconstructionPipeline", "ReconstructionSettings", "ReconstructionOutput",
           "TrialReconstruction", "Candidate", "DiffusionComponents", "check_conditioning_space",
           "save_random_tiny_vae", "img2img_timesteps", "best_of"]
