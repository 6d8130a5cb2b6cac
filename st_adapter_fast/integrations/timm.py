"""The integration's public names where they were when it knew only timm (`from st_adapter_fast.integrations.timm
import ...` keeps working). They live in adapters.py, classifier.py, authors.py, backbones.py and
libraries/timm.py, and take every supported library's models, not only timm's."""
from .adapters import (PLACEMENTS, adapted_module, adapter_config, add_st_adapters,  # noqa: F401
                       disable_adapters, has_st_adapters, remove_st_adapters, set_num_frames)
from .authors import convert_authors_state_dict, load_authors_checkpoint  # noqa: F401
from .backbones import backbone_blocks, set_grad_checkpointing  # noqa: F401
from .classifier import AUTHORS_POOLING, POOLINGS, VideoClassifier, build_video_classifier  # noqa: F401
from .libraries.timm import check_name as check_timm_model_name, create_timm_model  # noqa: F401
from .state import read_state_dict  # noqa: F401
