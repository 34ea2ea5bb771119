"""Training stages 1 (VAE) and 2 (CLIP): losses fall, the scaling factor is 1/std of the latents, and the exported
CLIP text tower is a transformers CLIPTextModel with the same per-token embeddings and token ids as open_clip."""

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from transformers import CLIPTextModel, CLIPTokenizer

from latentdiff.build.clip import (
    clip_config,
    create_clip,
    export_text_encoder,
    load_clip,
    retrieval_top1,
    save_clip,
    train_clip,
)
from latentdiff.build.vae import latent_scaling_factor, reconstruction_psnr, train_vae, vae_config
from latentdiff.models.pixels import to_pixels

COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (240, 210, 30)}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
CORNERS = {"top left corner": (0.3, 0.3), "top right corner": (0.7, 0.3), "bottom left corner": (0.3, 0.7),
           "bottom right corner": (0.7, 0.7)}


def synthetic_shapes(n: int, size: int = 32, seed: int = 0):
    """Discs and squares on plain backgrounds with captions in the shapes world's style: uint8 (n, size, size, 3)."""
    rng = np.random.default_rng(seed)
    images, captions = np.zeros((n, size, size, 3), np.uint8), []
    for i in range(n):
        color, bg, corner = rng.choice(list(COLORS)), rng.choice(list(BACKGROUNDS)), rng.choice(list(CORNERS))
        shape, large = rng.choice(["circle", "square"]), rng.random() < 0.5
        image = Image.new("RGB", (size, size), BACKGROUNDS[bg])
        cx, cy = np.array(CORNERS[corner]) * size
        r = size * (0.22 if large else 0.12)
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)([cx - r, cy - r, cx + r, cy + r], fill=COLORS[color])
        images[i] = np.asarray(image)
        captions.append(f"a {'large' if large else 'small'} {color} {shape} in the {corner} on a {bg} background")
    return images, captions


@pytest.fixture(autouse=True)
def one_thread():
    """Training steps this small are fastest on one thread; on a busy machine two threads spin (10× slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_CLIP = dict(embed_dim=32, image_size=32, patch_size=8, vision_width=32, vision_layers=1, text_width=32,
                 text_layers=2, heads=4, context_length=20)


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_exported_text_encoder_equals_open_clip_text_tower(tmp_path, quick_gelu):
    config = clip_config(**TINY_CLIP) | {"quick_gelu": quick_gelu}
    torch.manual_seed(0)
    model = create_clip(config).eval()
    with torch.no_grad():  # open_clip initialises biases to 0 and norms to 1; randomise so every tensor counts
        for name, p in model.named_parameters():
            if not name.startswith("visual"):
                p.add_(0.1 * torch.randn_like(p))
    save_clip(model, config, tmp_path / "clip")
    model = load_clip(tmp_path / "clip")  # the round trip through open_clip.create_model("local-dir:…")
    export_text_encoder(model, tmp_path / "model")
    assert not list((tmp_path / "model").rglob("*.bin"))
    encoder = CLIPTextModel.from_pretrained(tmp_path / "model", subfolder="text_encoder", use_safetensors=True)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "model", subfolder="tokenizer")
    assert tokenizer.model_max_length == model.context_length == encoder.config.max_position_embeddings
    assert encoder.config.hidden_act == ("quick_gelu" if quick_gelu else "gelu")

    _, captions = synthetic_shapes(4)
    captions += ["a red circle", "", "Hello, World? 3 squares & a circle.", " ".join(["blue"] * 30)]  # + long
    oc_ids = open_clip.SimpleTokenizer(context_length=model.context_length)(captions)
    hf_ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt").input_ids
    assert torch.equal(hf_ids, oc_ids)  # zero padding, EOT at the end of a truncated caption

    with torch.no_grad():
        x = model.token_embedding(oc_ids) + model.positional_embedding  # open_clip encode_text, before pooling
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))  # (B, L, W)
        out = encoder(hf_ids)  # no attention_mask: causal only, as open_clip
        torch.testing.assert_close(out.last_hidden_state, x, atol=1e-5, rtol=0)
        # EOT pooling agrees too: open_clip's own encode_text = pooled output @ text projection
        torch.testing.assert_close(out.pooler_output @ model.text_projection, model.encode_text(oc_ids),
                                   atol=1e-5, rtol=0)


def test_clip_training_lowers_contrastive_loss():
    images, captions = synthetic_shapes(64)
    losses = []
    model = train_clip(images, captions, config=clip_config(**TINY_CLIP), steps=40, batch_size=16, lr=2e-3,
                       warmup=5, seed=0, device="cpu", mixed_precision="no", log_every=0,
                       callback=lambda logs: losses.append(logs["loss"]))
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < np.mean(losses[:4]) - 0.3, losses
    assert 0 <= retrieval_top1(model, images, captions) <= 1


class _OneHotClip(torch.nn.Module):
    """A perfect 'CLIP' for three concepts: an image's red level and a caption's second word pick the concept."""

    context_length = 16

    def __init__(self, token_to_concept):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.zeros(()))
        self.token_to_concept = token_to_concept

    def encode_image(self, x, normalize=True):
        return F.one_hot(((x[:, 0, 0, 0] + 1) * 127.5).round().long(), 3).float()

    def encode_text(self, tokens, normalize=True):
        return F.one_hot(torch.tensor([self.token_to_concept[t] for t in tokens[:, 2].tolist()]), 3).float()


def test_retrieval_counts_identical_captions_as_right_or_only_the_own_image():
    captions = ["a red circle", "a red circle", "a blue square", "a green circle"]
    images = np.zeros((4, 8, 8, 3), np.uint8)
    images[:, :, :, 0] = np.array([0, 0, 1, 2])[:, None, None]
    tokens = open_clip.SimpleTokenizer(context_length=16)(captions)[:, 2].tolist()
    model = _OneHotClip({tokens[0]: 0, tokens[2]: 1, tokens[3]: 2})
    assert retrieval_top1(model, images, captions) == 1.0
    assert retrieval_top1(model, images, captions, match="index") == 0.75  # the 2nd red circle finds the 1st
    with pytest.raises(ValueError, match="tokens but the text context is 16"):
        retrieval_top1(model, images, captions[:3] + [" ".join(["red"] * 20)])


def test_vae_training_lowers_reconstruction_loss_and_scaling_factor_is_one_over_latent_std():
    images, _ = synthetic_shapes(40)
    held = images[32:]
    config = vae_config((16, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=32)
    assert config["block_out_channels"] == (16, 16, 16) and len(config["down_block_types"]) == 3  # factor 4
    logs = []
    untrained = train_vae(images[:32], config=config, steps=0, seed=0, device="cpu", mixed_precision="no")
    vae = train_vae(images[:32], config=config, steps=60, batch_size=8, lr=2e-3, warmup=5, seed=0, device="cpu",
                    mixed_precision="no", log_every=0, callback=logs.append)
    rec = [entry["rec"] for entry in logs]
    assert np.mean(rec[-8:]) < 0.7 * np.mean(rec[:4]), rec
    assert reconstruction_psnr(vae, held) > reconstruction_psnr(untrained, held) + 2

    x = to_pixels(torch.from_numpy(held))  # (8, 3, 32, 32)
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
        means = posterior.mean  # (8, 4, 8, 8)
        samples = posterior.sample(torch.Generator().manual_seed(3))
    assert latent_scaling_factor(vae, held, sample=False) == pytest.approx(1 / means.flatten().std().item(), rel=1e-5)
    factor = latent_scaling_factor(vae, held, seed=3)  # default: posterior samples, as LDM
    assert factor == pytest.approx(1 / samples.flatten().std().item(), rel=1e-5)
    assert vae.config.scaling_factor == factor


def test_vae_training_is_deterministic_given_the_seed():
    images, _ = synthetic_shapes(8, size=16)
    config = vae_config((8, 8, 8), layers_per_block=1, norm_num_groups=4, sample_size=16)
    a, b, c = (train_vae(images, config=config, steps=3, batch_size=2, seed=s, device="cpu", mixed_precision="no")
               for s in (0, 0, 1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_shipping_copy_is_fp16_without_build_paths_and_generates_the_same(tiny_models, tmp_path):
    """`shapes build`'s last step: fp16 weights, no build-machine folder names, same images (to fp16 rounding)."""
    import json
    import shutil

    from safetensors import safe_open

    from latentdiff.build.recipe import to_fp16_folder
    from latentdiff.pipelines import Pipeline

    source = tmp_path / "trained"
    shutil.copytree(tiny_models[("epsilon", 8)], source)
    vae_config = source / "vae" / "config.json"
    vae_config.write_text(json.dumps({**json.loads(vae_config.read_text()), "_name_or_path": str(tmp_path)}))
    (tmp_path / "shipped").mkdir()  # an older version there is replaced, never merged
    (tmp_path / "shipped" / "stale.txt").write_text("old")
    to_fp16_folder(source, tmp_path / "shipped", {"guidance": 4.0})

    shipped = tmp_path / "shipped"
    assert not (shipped / "stale.txt").exists() and not list(tmp_path.glob(".shipped*"))
    assert json.loads((shipped / "latentdiff_generation.json").read_text()) == {"guidance": 4.0}
    assert all("_name_or_path" not in json.loads(f.read_text()) for f in shipped.rglob("config.json"))
    for file in shipped.rglob("*.safetensors"):
        with safe_open(file, "pt") as f:
            assert all(f.get_slice(k).get_dtype() in ("F16", "I64") for k in f.keys())
    run = dict(steps=4, guidance=3.0, seed=1)
    ours = np.asarray(Pipeline.from_pretrained(shipped, device="cpu")("a red circle", **run)[0], dtype=int)
    ref = np.asarray(Pipeline.from_pretrained(source, device="cpu")("a red circle", **run)[0], dtype=int)
    assert np.abs(ours - ref).max() <= 2
