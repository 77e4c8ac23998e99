"""Hugging Face Hub: export a checkpoint as safetensors with its TENET settings and model card, push, load back."""
from .client import HubError, check_push_ready, create_model, main, push, push_after_training
from .export import CONFIG_NAME, EXPORT_FILES, CheckpointState, ExportError, check_repo_id, export_to_folder, \
    known_tenet_fields, load_checkpoint_state
from .model_card import CARD_TAGS, DEFAULT_LICENSE, model_card
