"""Textual-inversion embeddings: diffusers' and A1111's files give diffusers' images; multi-vector tokens expand in
prompts and move whole to the next chunk (A1111); bad files and tokens are one-line errors."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.loaders import TextualInversionLoaderMixin
from safetensors.torch import save_file

from latentdiff.models import load_components
from latentdiff.models.embeddings import load_embedding
from latentdiff.pipelines import Pipeline
from latentdiff.pipelines.prompts import encode_prompts, prompt_chunks, window

WIDTH = 32  # the tiny text encoder's hidden size
STEPS, SEED = 4, 7


def vectors(n, seed=0, width=WIDTH):
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models[("epsilon", 8)]


@pytest.fixture
def components(model):
    """A fresh copy of the model: loading an embedding changes its tokenizer and text encoder."""
    return load_components(model, device="cpu")


def diffusers_format(folder, token, n, seed=0):
    """diffusers' ``learned_embeds.safetensors``: {token: (D,)} for one vector, {token: (n, D)} for more."""
    folder.mkdir(exist_ok=True)
    v = vectors(n, seed)
    save_file({token: v[0] if n == 1 else v}, folder / "learned_embeds.safetensors")
    return folder / "learned_embeds.safetensors", v


def a1111_safetensors(folder, stem, n, seed=0, key="emb_params"):
    v = vectors(n, seed)
    save_file({key: v}, folder / f"{stem}.safetensors")
    return folder / f"{stem}.safetensors", v


def a1111_pt(folder, stem, v, name="trained-name"):
    """What A1111's ``Embedding.save`` writes with torch.save (plain tensors and dicts)."""
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": v}, "name": name, "step": 1500,
                "sd_checkpoint": None, "sd_checkpoint_name": None}, folder / f"{stem}.pt")
    return folder / f"{stem}.pt"


def images(pipe_or_ours, prompt, negative):
    if isinstance(pipe_or_ours, Pipeline):
        out = pipe_or_ours(prompt, negative_prompt=negative, steps=STEPS, guidance=7.5, sampler="ddim", seed=SEED)
    else:
        out = pipe_or_ours(prompt, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=7.5,
                           generator=torch.Generator().manual_seed(SEED)).images
    return np.asarray(out[0]).astype(int)


@pytest.mark.parametrize("kind", ["diffusers-1", "a1111-3"])
def test_same_pixels_as_diffusers_load_textual_inversion(model, components, tmp_path, kind):
    """The token in the prompt and in the negative prompt: our images equal diffusers' (≤ 1/255), and differ from
    the same prompts without the token. The diffusers token has capitals (read by id, not lowercased text); the
    A1111 token is the file's stem and its 3 vectors follow it in the prompt."""
    if kind == "diffusers-1":
        file, _ = diffusers_format(tmp_path / "cat-toy", "<Cat-Toy>", 1, seed=1)
        token = "<Cat-Toy>"
    else:
        file, _ = a1111_safetensors(tmp_path, "charturner", 3, seed=2)
        token = "charturner"
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(str(file), token=token)
    info = load_embedding(components, file)
    assert info["token"] == token and info["vectors"] == int(kind[-1])
    ours = Pipeline(components)
    prompt, negative = f"a {token} on a blue background", f"{token}, blurry"
    with_token = images(ours, prompt, negative)
    assert np.abs(with_token - images(pipe, prompt, negative)).max() <= 1
    without = images(ours, "a on a blue background", "blurry")
    assert np.abs(with_token - without).max() > 10 and with_token.std() > 5


def test_a_multi_vector_token_expands_with_its_weight(components, tmp_path):
    """'EasyNeg' (capitals, 2 vectors) stands for both its ids, each with the emphasis weight; the text around it
    tokenizes as it did before the embedding was loaded."""
    fresh = prompt_chunks(components.tokenizer, "two red squares, (one:1.3)", "a1111")[0]
    load_embedding(components, a1111_safetensors(tmp_path, "EasyNeg", 2)[0])
    ids = components.tokenizer.convert_tokens_to_ids(["EasyNeg", "EasyNeg_1"])
    [chunk] = prompt_chunks(components.tokenizer, "two red squares, (EasyNeg:1.5) (one:1.3)", "a1111")[0]
    [before] = fresh
    assert chunk.tokens == before.tokens[:4] + ids + before.tokens[4:]
    assert chunk.weights == [1.0] * 4 + [1.5, 1.5] + [1.3]
    assert prompt_chunks(components.tokenizer, "two red squares, (one:1.3)", "a1111")[0] == fresh


def test_vectors_move_whole_to_the_next_chunk(components, tmp_path):
    """A1111's tokenize_line: an embedding whose vectors do not fit closes the chunk. In the last allowed chunk
    (max_chunks) they fill it and the rest is dropped, as diffusers truncates; more vectors than a chunk holds
    are split in order."""
    tokenizer = components.tokenizer
    size = window(tokenizer)  # 14
    load_embedding(components, a1111_safetensors(tmp_path, "tri", 3)[0], token="<tri>")
    tri = tokenizer.convert_tokens_to_ids(["<tri>", "<tri>_1", "<tri>_2"])
    words = lambda k: " ".join(["red"] * k)  # one token each
    red = tokenizer.convert_tokens_to_ids("red</w>")

    fits, _ = prompt_chunks(tokenizer, f"{words(size - 3)} <tri>")
    assert [c.tokens for c in fits] == [[red] * (size - 3) + tri]
    moved, _ = prompt_chunks(tokenizer, f"{words(size - 2)} <tri> blue")
    assert [c.tokens for c in moved] == [[red] * (size - 2), tri + [tokenizer.convert_tokens_to_ids("blue</w>")]]
    kept, dropped = prompt_chunks(tokenizer, f"{words(size - 2)} <tri>", max_chunks=1)
    assert [c.tokens for c in kept] == [[red] * (size - 2) + tri[:2]] and dropped == tri[2:]
    expanded = TextualInversionLoaderMixin().maybe_convert_prompt(f"{words(size - 2)} <tri>", tokenizer)
    assert kept[0].tokens == tokenizer(expanded, truncation=True).input_ids[1:-1]  # diffusers' one window
    comma, blue = tokenizer.convert_tokens_to_ids([",</w>", "blue</w>"])
    backtracked, _ = prompt_chunks(tokenizer, f"{words(size - 2)}, blue <tri>")  # the comma rule comes first
    assert [c.tokens for c in backtracked] == [[red] * (size - 2) + [comma], [blue] + tri]
    single, _ = prompt_chunks(tokenizer, f"{words(size)} <tri>")  # at a full chunk, as a word would
    assert [c.tokens for c in single] == [[red] * size, tri]

    load_embedding(components, a1111_safetensors(tmp_path, "longest", size + 2)[0], token="<long>")
    long = tokenizer.convert_tokens_to_ids([f"<long>_{i}" if i else "<long>" for i in range(size + 2)])
    split, _ = prompt_chunks(tokenizer, "red <long>")
    assert [c.tokens for c in split] == [[red] + long[: size - 1], long[size - 1:]]
    z = encode_prompts(components, [f"{words(size - 2)} <tri>"], max_chunks=None)
    assert z.shape == (1, 2 * tokenizer.model_max_length, WIDTH)


@pytest.mark.parametrize("fmt", ["a1111", "diffusers"])
def test_a_pickle_loads_with_allow_pickle(model, components, tmp_path, fmt):
    """A1111's .pt ({"string_to_param": {"*": (n, D)}, "name", ...}) and diffusers' .bin ({token: (n, D)}): the
    same token ids and rows as diffusers' loader, in the encoder's dtype, and the encoder stays frozen."""
    v = vectors(2, seed=3)
    if fmt == "a1111":
        file, token, name = a1111_pt(tmp_path, "mystyle", v), "mystyle", "trained-name"
    else:
        (tmp_path / "d").mkdir()
        file, token, name = tmp_path / "d" / "learned_embeds.bin", "<my-style>", "<my-style>"
        torch.save({token: v}, file)
    components.text_encoder.to(torch.bfloat16)
    info = load_embedding(components, file, allow_pickle=True)
    assert info == {"token": token, "vectors": 2, "path": str(file.resolve()), "name": name}
    rows = components.text_encoder.get_input_embeddings().weight
    ids = components.tokenizer.convert_tokens_to_ids([token, f"{token}_1"])
    assert rows.dtype == torch.bfloat16 and not rows.requires_grad
    assert torch.equal(rows[ids], v.to(torch.bfloat16))

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    pipe.load_textual_inversion(str(file), token=token)
    assert pipe.tokenizer.convert_tokens_to_ids([token, f"{token}_1"]) == ids
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], v)


def test_the_token_is_the_stem_unless_given(components, tmp_path):
    file, _ = a1111_safetensors(tmp_path, "bad-hands", 1, key="string_to_param.*")  # A1111's layout, flattened
    assert load_embedding(components, file, token="<hands>")["token"] == "<hands>"
    assert load_embedding(components, a1111_safetensors(tmp_path, "bad-feet", 1)[0])["token"] == "bad-feet"
    folder_file, _ = diffusers_format(tmp_path / "concept", "<concept>", 2)
    assert load_embedding(components, folder_file.parent)["token"] == "<concept>"  # a folder, diffusers' token
    [chunk] = prompt_chunks(components.tokenizer, "<hands> bad-feet <concept>")[0]
    assert len(chunk.tokens) == 4  # 1 + 1 + 2 vectors


def bad_cases(tmp_path):
    """(file, load_embedding keyword arguments, words the one-line message must contain)."""
    wide, _ = a1111_safetensors(tmp_path, "wide", 2, key="emb_params")
    save_file({"emb_params": vectors(2, width=16)}, wide)
    lora = tmp_path / "lora.safetensors"
    save_file({f"lora_unet_down_blocks_0_attentions_0_proj_in.{k}": torch.ones(4, 4)
               for k in ("lora_down.weight", "lora_up.weight", "alpha")}, lora)
    sdxl = tmp_path / "sdxl.safetensors"
    save_file({"clip_l": vectors(1), "clip_g": vectors(1, width=64)}, sdxl)
    pt = a1111_pt(tmp_path, "pickled", vectors(1))
    save_file({"emb_params": vectors(1)}, pt.with_suffix(".safetensors"))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    return {
        "wrong width": (wide, {}, ["wide.safetensors", "width 16", "takes 32", "another model"]),
        "a word of the vocabulary": (a1111_safetensors(tmp_path, "Cat", 1)[0], {}, ["'Cat'", "vocabulary", "token="]),
        "a token given that is a word": (pt.with_suffix(".safetensors"), {"token": "circle"}, ["'circle'", "PATH:TOKEN"]),
        "pickle without allow_pickle": (pt, {}, ["pickled.pt", "allow_pickle", "--allow-pickle", "trust"]),
        "a LoRA": (lora, {}, ["lora.safetensors", "not a textual-inversion embedding", "lora_unet"]),
        "SDXL": (sdxl, {}, ["SDXL", "clip_l"]),
        "missing file": (tmp_path / "nowhere.safetensors", {}, ["nowhere.safetensors", "does not exist"]),
        "corrupt file": (corrupt, {}, ["corrupt.safetensors", "safetensors"]),
    }


@pytest.mark.parametrize("case", ["wrong width", "a word of the vocabulary", "a token given that is a word",
                                  "pickle without allow_pickle", "a LoRA", "SDXL", "missing file", "corrupt file"])
def test_bad_inputs_are_one_line_errors_that_change_nothing(components, tmp_path, case):
    file, kwargs, words = bad_cases(tmp_path)[case]
    before = len(components.tokenizer), components.text_encoder.get_input_embeddings().weight.shape
    with pytest.raises(ValueError) as error:
        load_embedding(components, file, **kwargs)
    message = str(error.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert (len(components.tokenizer), components.text_encoder.get_input_embeddings().weight.shape) == before


def test_a_token_already_loaded_or_read_as_anothers_vector_is_refused(components, tmp_path):
    file, _ = a1111_safetensors(tmp_path, "style", 2)
    load_embedding(components, file, token="<style>")
    with pytest.raises(ValueError, match="'<style>' is already in the tokenizer's vocabulary"):
        load_embedding(components, file, token="<style>")
    with pytest.raises(ValueError, match="'<style>_2' clashes with '<style>'"):  # would read as its 3rd vector
        load_embedding(components, file, token="<style>_2")
    assert load_embedding(components, file, token="<style2>")["vectors"] == 2  # several embeddings
    [chunk] = prompt_chunks(components.tokenizer, "<style> <style2>")[0]
    assert len(chunk.tokens) == 4
