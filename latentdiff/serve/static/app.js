// The latentdiff page: a form over the A1111-compatible API of this server, and nothing from another host.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { config: null, busy: false, image: null, masked: false, run: 0 };

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const retry = response.headers.get("Retry-After");
    throw new Error((data.detail || response.statusText) + (retry ? ` (retry in ${retry} s)` : ""));
  }
  return data;
}

function say(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

async function init() {
  try {
    state.config = await api("/latentdiff/v1/config");
  } catch (error) {
    say(`cannot read the server's settings: ${error.message}`, true);
    return;
  }
  const { defaults, samplers, limits, model } = state.config;
  $("model").textContent = model;
  for (const s of samplers) {
    const option = new Option(s.label, s.name);
    option.selected = s.name === defaults.sampler;
    $("sampler").add(option);
  }
  $("steps").value = defaults.steps;
  $("steps").max = limits.max_steps;
  $("cfg_scale").value = defaults.cfg_scale;
  for (const side of ["width", "height"]) {
    $(side).value = defaults[side];
    $(side).max = limits.max_size;
    $(side).step = $(side).min = state.config.vae_factor;
  }
  $("batch_size").max = limits.max_batch;
  $("negative_prompt").value = defaults.negative_prompt || "";
}

// --- image upload and mask brush -------------------------------------------------------------------------------

function loadImage(file) {
  const reader = new FileReader();
  reader.onload = () => {
    const img = new Image();
    img.onload = () => {
      const max = state.config ? state.config.limits.max_size : 1024;
      const f = state.config ? state.config.vae_factor : 8;
      const scale = Math.min(1, max / Math.max(img.width, img.height));
      const w = Math.max(f, Math.floor(img.width * scale / f) * f);
      const h = Math.max(f, Math.floor(img.height * scale / f) * f);
      for (const canvas of [$("image-canvas"), $("mask-canvas")]) { canvas.width = w; canvas.height = h; }
      $("image-canvas").getContext("2d").drawImage(img, 0, 0, w, h);
      $("width").value = w;
      $("height").value = h;
      state.image = true;
      state.masked = false;
      $("canvas-box").hidden = false;
      $("image-controls").hidden = false;
    };
    img.onerror = () => say("that file is not an image this browser can read", true);
    img.src = reader.result;
  };
  reader.readAsDataURL(file);
}

function setupBrush() {
  const canvas = $("mask-canvas");
  const ctx = canvas.getContext("2d");
  let drawing = false;
  let last = null;
  const point = (event) => {
    const rect = canvas.getBoundingClientRect();
    return [(event.clientX - rect.left) * canvas.width / rect.width,
            (event.clientY - rect.top) * canvas.height / rect.height];
  };
  const stroke = (to) => {
    ctx.strokeStyle = "rgba(255, 40, 40, 0.6)";
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.lineWidth = Number($("brush").value) * canvas.width / canvas.getBoundingClientRect().width;
    ctx.beginPath();
    ctx.moveTo(...(last || to));
    ctx.lineTo(...to);
    ctx.stroke();
    last = to;
    state.masked = true;
  };
  canvas.addEventListener("pointerdown", (e) => { drawing = true; last = null; canvas.setPointerCapture(e.pointerId); stroke(point(e)); });
  canvas.addEventListener("pointermove", (e) => { if (drawing) stroke(point(e)); });
  canvas.addEventListener("pointerup", () => { drawing = false; });
  $("clear-mask").addEventListener("click", () => { ctx.clearRect(0, 0, canvas.width, canvas.height); state.masked = false; });
  $("remove-image").addEventListener("click", () => {
    state.image = null;
    state.masked = false;
    $("upload").value = "";
    $("canvas-box").hidden = true;
    $("image-controls").hidden = true;
  });
}

function maskDataURL() {
  // white where painted, black elsewhere, as the API reads a mask
  const source = $("mask-canvas");
  const out = document.createElement("canvas");
  out.width = source.width;
  out.height = source.height;
  const ctx = out.getContext("2d");
  const pixels = source.getContext("2d").getImageData(0, 0, source.width, source.height);
  for (let i = 0; i < pixels.data.length; i += 4) {
    const v = pixels.data[i + 3] > 0 ? 255 : 0;
    pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = v;
    pixels.data[i + 3] = 255;
  }
  ctx.putImageData(pixels, 0, 0);
  return out.toDataURL("image/png");
}

// --- generation, progress, gallery -----------------------------------------------------------------------------

function request() {
  const number = (id) => Number($(id).value);
  const sampler = state.config.samplers.find((s) => s.name === $("sampler").value);
  const body = {
    prompt: $("prompt").value, negative_prompt: $("negative_prompt").value,
    sampler_name: sampler.sampler_name, scheduler: sampler.scheduler,
    steps: number("steps"), cfg_scale: number("cfg_scale"), seed: number("seed"),
    width: number("width"), height: number("height"), batch_size: number("batch_size"), save_images: true,
  };
  if (!state.image) return ["/sdapi/v1/txt2img", body];
  body.init_images = [$("image-canvas").toDataURL("image/png")];
  body.denoising_strength = number("denoising_strength");
  body.resize_mode = 0;
  if (state.masked) { body.mask = maskDataURL(); body.mask_blur = 4; }
  return ["/sdapi/v1/img2img", body];
}

async function pollProgress() {
  const run = ++state.run;  // a poll answered after its run ended must not overwrite the result
  while (state.busy && run === state.run) {
    try {
      const p = await api("/sdapi/v1/progress");
      if (!state.busy || run !== state.run) break;
      $("progress-bar").style.width = `${Math.round(p.progress * 100)}%`;
      if (p.current_image) {
        $("preview").src = `data:image/png;base64,${p.current_image}`;
        $("preview").hidden = false;
      }
      if (p.state.job_count > 0) say(`step ${p.state.sampling_step} of ${p.state.sampling_steps}` + (p.state.queued ? `, ${p.state.queued} waiting` : ""));
    } catch (error) { /* the next poll will tell */ }
    await new Promise((resolve) => setTimeout(resolve, 400));
  }
}

function addToGallery(images, info) {
  const batch = document.createDocumentFragment();  // newest batch first, its images in seed order
  images.forEach((b64, i) => {
    const card = document.createElement("figure");
    card.className = "card";
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    img.alt = info.all_prompts[i] || "generated image";
    const text = document.createElement("pre");
    text.textContent = info.infotexts[i] || "";
    const link = document.createElement("a");
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    link.href = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
    link.download = `latentdiff-${info.all_seeds[i]}.png`;
    link.textContent = "Download";
    card.append(img, text, link);
    batch.append(card);
  });
  $("gallery").prepend(batch);
}

async function generate(event) {
  event.preventDefault();
  if (state.busy || !state.config) return;
  state.busy = true;
  $("generate").disabled = true;
  $("interrupt").disabled = false;
  $("progress").hidden = false;
  $("progress-bar").style.width = "0%";
  say("waiting for the server…");
  pollProgress();
  try {
    const [path, body] = request();
    const result = await api(path, body);
    const info = JSON.parse(result.info);
    addToGallery(result.images, info);
    const notes = [info.interrupted ? "interrupted" : "", ...(info.warnings || [])].filter(Boolean);
    say(`done: seed ${info.seed}` + (notes.length ? ` — ${notes.join("; ")}` : ""));
  } catch (error) {
    say(error.message, true);
  } finally {
    state.busy = false;
    $("generate").disabled = false;
    $("interrupt").disabled = true;
    $("progress").hidden = true;
    $("preview").hidden = true;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  init();
  setupBrush();
  $("form").addEventListener("submit", generate);
  $("interrupt").addEventListener("click", () => api("/sdapi/v1/interrupt", {}).catch(() => {}));
  $("upload").addEventListener("change", (e) => { if (e.target.files[0]) loadImage(e.target.files[0]); });
});
