import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
from tiny import save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Folders of tiny random SD models: {(prediction_type, vae_factor): path}."""
    root = tmp_path_factory.mktemp("models")
    models = {
        (p, f): save_tiny(root / f"{p}-f{f}", prediction_type=p, vae_factor=f)
        for p, f in [("epsilon", 8), ("v_prediction", 4)]
    }
    models["sd2"] = save_tiny(root / "sd2", prediction_type="v_prediction", vae_factor=8, sd2=True)
    models["inpaint"] = save_tiny(root / "inpaint", inpainting=True)  # a 9-channel inpainting UNet
    return models


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A folder of 8 rendered shapes images with captions, in the custom-dataset format."""
    from latentdiff.shapes import render_dataset

    root = tmp_path_factory.mktemp("shapes")
    render_dataset(root, 8, seed=0)
    return root
