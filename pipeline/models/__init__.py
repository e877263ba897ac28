"""Student models: backbones (SASRec, GRU4Rec), the multimodal student, and its safetensors persistence."""

from pipeline.models.persist import load_student, save_student
from pipeline.models.student import Student, StudentConfig

__all__ = ["Student", "StudentConfig", "load_student", "save_student"]
