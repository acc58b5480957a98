"""jaxface: Deep3D face reconstruction in JAX."""

from jaxface.camera import Camera
from jaxface.coeffs import Coeffs
from jaxface.formation import Face, form_face
from jaxface.model import FaceModel

__all__ = ["Camera", "Coeffs", "Face", "FaceModel", "form_face"]
__version__ = "0.1.0"
