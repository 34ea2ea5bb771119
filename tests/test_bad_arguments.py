"""Bad arguments raise a ValueError that names the argument and what is allowed."""

import pytest
import torch
from fakes import fake_denoiser

from latentdiff.core.guidance import CFGDenoiser
from latentdiff.core.sampling import sample_ddim
from latentdiff.core.schedule import Schedule, make_betas


@pytest.mark.parametrize(
    "call,pattern",
    [
        (lambda: make_betas("cosine"), r"beta_schedule='cosine'.*'linear', 'scaled_linear', 'squaredcos_cap_v2'"),
        (lambda: Schedule.make(prediction_type="eps"), r"prediction_type='eps'.*'epsilon', 'v_prediction', 'sample'"),
        (lambda: Schedule.make(timestep_spacing="even"), r"timestep_spacing='even'.*'leading', 'trailing', 'linspace'"),
        (lambda: Schedule.make(variance_type="learned"), r"variance_type='learned'.*'fixed_small', 'fixed_large'"),
        (lambda: Schedule.make().timesteps(0), r"steps=0 must be an integer between 1 and num_train_timesteps=1000"),
        (lambda: Schedule.make().timesteps(-3), r"steps=-3 must be an integer between 1 and"),
        (lambda: Schedule.make().timesteps(1001), r"steps=1001 must be an integer between 1 and num_train_timesteps"),
        (lambda: Schedule.make(steps_offset=1).timesteps(1000), r"steps=1000 .* steps_offset=1 reaches timestep 1000"),
        (lambda: make_betas("linear", 0), r"num_train_timesteps=0 must be a positive integer"),
        (lambda: sample_ddim(fake_denoiser, torch.zeros(1, 1), Schedule.make(), [999], eta=-0.1),
         r"eta=-0.1 must be >= 0"),
        (lambda: CFGDenoiser(fake_denoiser, torch.zeros(1), None, scale=7.5), r"guidance scale=7.5 needs an"),
        (lambda: Schedule.from_config({"thresholding": True}), r"thresholding=True"),
    ],
)
def test_bad_argument_message(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()
