"""jaxface: Deep3D face reconstruction (Deng et al. 2019) in JAX.

    import jaxface
    result = jaxface.reconstruct(["photo.jpg"])     # NAME.txt (5 points) beside the photo, or a detector
    result.coeffs, result.vertices, result.landmarks, result.overlays

Modules, one per stage: `model` (FaceModel, BFM loaders, the synthetic model, the UV map),
`formation` (shape, albedo, pose, camera, SH light), `render` (pure-JAX rasterizer), `rnet`
(Flax ResNet-50 and weight conversion), `align`, `losses`, `fit`, `reconstruct`, `texture`
(texture maps from photos), `edit` (expression edits), `evaluate`, `outputs`, `detect`, `train`, `video`.
"""

from jaxface.camera import Camera
from jaxface.coeffs import Coeffs
from jaxface.edit import neutralize, transfer_expression
from jaxface.fit import FitConfig, FitResult, average_identity, fit, fit_set
from jaxface.formation import Face, form_face, form_faces
from jaxface.model import FaceModel
from jaxface.model.bfm import convert_bfm09, load_face_model, load_front_model
from jaxface.model.synthetic import synthetic_face_model
from jaxface.outputs import save_outputs
from jaxface.reconstruct import Reconstruction, ReconstructConfig, Reconstructor, reconstruct
from jaxface.render import Fragments, RenderOutput, interpolate, rasterize, render, render_mesh
from jaxface.texture import TextureConfig, Textures, extract_textures, render_textured, texture_atlas
from jaxface.video import reconstruct_video

__all__ = [
    "Camera",
    "Coeffs",
    "Face",
    "FaceModel",
    "FitConfig",
    "FitResult",
    "Fragments",
    "ReconstructConfig",
    "Reconstruction",
    "Reconstructor",
    "RenderOutput",
    "TextureConfig",
    "Textures",
    "average_identity",
    "convert_bfm09",
    "extract_textures",
    "fit",
    "fit_set",
    "form_face",
    "form_faces",
    "interpolate",
    "load_face_model",
    "load_front_model",
    "neutralize",
    "rasterize",
    "reconstruct",
    "reconstruct_video",
    "render",
    "render_mesh",
    "render_textured",
    "save_outputs",
    "synthetic_face_model",
    "texture_atlas",
    "transfer_expression",
]
__version__ = "0.1.0"
