"""The training objective on fixed tensors: min-SNR weights, noise offset, caption dropout, targets."""

import torch

from latentdiff.core.schedule import Schedule
from latentdiff.training.objective import drop_captions, min_snr_weight, noised_batch, sample_noise, weighted_mse


def test_min_snr_weights_by_hand():
    snr = torch.tensor([0.5, 5.0, 20.0], dtype=torch.float64)
    gamma = 5.0
    torch.testing.assert_close(min_snr_weight(snr, gamma, "epsilon"), torch.tensor([1.0, 1.0, 0.25]))
    torch.testing.assert_close(min_snr_weight(snr, gamma, "v_prediction"),
                               torch.tensor([0.5 / 1.5, 5 / 6, 5 / 21], dtype=torch.float32))
    torch.testing.assert_close(min_snr_weight(snr, gamma, "sample"), torch.tensor([0.5, 5.0, 5.0]))
    torch.testing.assert_close(min_snr_weight(snr, None, "epsilon"), torch.ones(3))


def test_noise_offset_adds_a_per_channel_constant_drawn_after_the_noise():
    latents = torch.zeros(2, 3, 4, 4)
    plain = sample_noise(latents, torch.Generator().manual_seed(0))
    offset = sample_noise(latents, torch.Generator().manual_seed(0), noise_offset=0.1)
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(2, 3, 4, 4, generator=g)
    per_channel = torch.randn(2, 3, generator=g)
    torch.testing.assert_close(plain, eps)
    torch.testing.assert_close(offset, eps + 0.1 * per_channel[:, :, None, None])
    diff = offset - plain
    assert torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff))  # constant over space


def test_caption_dropout_replaces_exactly_the_drawn_samples():
    emb, empty = torch.randn(6, 5, 8), torch.randn(5, 8)
    out = drop_captions(emb, empty, 0.5, torch.Generator().manual_seed(1))
    drop = torch.rand(6, generator=torch.Generator().manual_seed(1)) < 0.5
    assert 0 < drop.sum() < 6
    for i in range(6):
        torch.testing.assert_close(out[i], empty if drop[i] else emb[i])
    assert drop_captions(emb, empty, 0.0, torch.Generator()) is emb


def test_noised_batch_is_the_forward_process_with_matching_target_and_weights():
    schedule = Schedule.make("scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction")
    x0 = torch.randn(4, 4, 8, 8)
    batch = noised_batch(x0, schedule, torch.Generator().manual_seed(1), snr_gamma=5.0)
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (4,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    a = schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(batch.t, t)
    torch.testing.assert_close(batch.x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    torch.testing.assert_close(batch.target, a.sqrt() * eps - (1 - a).sqrt() * x0)
    snr = (a / (1 - a)).flatten().double()
    torch.testing.assert_close(batch.weight, (torch.clamp(snr, max=5.0) / (snr + 1)).float())


def test_weighted_mse_by_hand():
    pred, target = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    target[1] *= 2
    assert weighted_mse(pred, target, torch.tensor([1.0, 0.5])).item() == (1.0 + 0.5 * 4.0) / 2


def test_ema_warms_up_like_diffusers_and_averages_by_hand():
    from diffusers.training_utils import EMAModel

    from latentdiff.training.ema import EMA

    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], decay=0.999)
    reference = EMAModel([torch.nn.Parameter(torch.zeros(3))], decay=0.999)
    expected = torch.zeros(3)
    for step in range(30):
        with torch.no_grad():
            p.add_(1.0)
        ema.update(step)
        d = 0.0 if step == 0 else min(0.999, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * p.detach()
        assert abs(ema.decay_at(step) - reference.get_decay(step + 1)) < 1e-12  # diffusers counts from 1
    torch.testing.assert_close(ema.shadow[0], expected)
