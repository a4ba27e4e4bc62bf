"""The fit3d-hub feature explorer as a Hugging Face Space (Gradio SDK): push this repository
(or this file with ``requirements.txt`` holding ``fit3d-hub[app]``) to a Space. The models
come from the ``FIT3D_MODELS`` variable (space-separated registry names, hub repo ids or
directories; default: dinov2_small's FiT3D and the tiny offline demo ViT)."""

import os

from fit3d_hub.app import launch

if __name__ == "__main__":
    launch(os.environ.get("FIT3D_MODELS", "dinov2_small tiny-demo").split(),
           host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
           port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
