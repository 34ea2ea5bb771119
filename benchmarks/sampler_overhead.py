"""Per-step sampler overhead: ours vs diffusers' `scheduler.step`, zero-cost denoiser, one process.

    python benchmarks/sampler_overhead.py [--steps 50] [--repeats 30] [--shape 2 4 64 64]

Each repeat runs a full N-step loop of ours and of diffusers, interleaved, on the same latents with a
denoiser that returns a precomputed tensor (so only the sampler's own work is timed). The table shows
the median per-step time over repeats and the ratio ours / diffusers (lower is better).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

from latentdiff.core.dpm_solver import sample_dpmpp_2m
from latentdiff.core.euler import sample_euler
from latentdiff.core.samplers import plan
from latentdiff.core.sampling import ddim_invert, sample_ddim, sample_ddpm
from latentdiff.core.schedule import Schedule

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
          clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon")


def diffusers_loop(scheduler, out, x, generator=None, **kwargs):
    for t in scheduler.timesteps:
        x = scheduler.step(out, t, x, **kwargs, **({"generator": generator} if generator else {})).prev_sample
    return x


def cases(steps: int, out: torch.Tensor):
    zero_cost = lambda x, t: out  # noqa: E731
    schedule = Schedule.from_config(SD)
    ts = schedule.timesteps(steps)

    def sched(cls):
        s = cls(**{k: v for k, v in SD.items() if not (cls is DDPMScheduler and k == "set_alpha_to_one")})
        s.set_timesteps(steps)
        return s

    ddim, ddpm, inverse = sched(DDIMScheduler), sched(DDPMScheduler), sched(DDIMInverseScheduler)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    yield ("DDIM eta=0", lambda x: sample_ddim(zero_cost, x, schedule, ts),
           lambda x: diffusers_loop(ddim, out, x, eta=0.0))
    yield ("DDIM eta=1", lambda x: sample_ddim(zero_cost, x, schedule, ts, eta=1.0, generator=g()),
           lambda x: diffusers_loop(ddim, out, x, generator=g(), eta=1.0))
    yield ("DDPM", lambda x: sample_ddpm(zero_cost, x, schedule, ts, generator=g()),
           lambda x: diffusers_loop(ddpm, out, x, generator=g()))
    yield ("DDIM inversion", lambda x: ddim_invert(zero_cost, x, schedule, ts),
           lambda x: diffusers_loop(inverse, out, x))
    dpm_ts = plan("dpmpp-2m", schedule, steps).timesteps  # the registry's plan: leading, steps_offset 1
    for sde in (False, True):
        ref = DPMSolverMultistepScheduler(**{k: v for k, v in SD.items() if k not in ("clip_sample", "set_alpha_to_one")},
                                          timestep_spacing="leading",
                                          algorithm_type="sde-dpmsolver++" if sde else "dpmsolver++")

        def theirs(x, ref=ref):
            ref.set_timesteps(steps)  # resets its multistep history
            return diffusers_loop(ref, out, x, generator=g())
        yield (f"DPM++ 2M{' SDE' if sde else ''}",
               lambda x, sde=sde: sample_dpmpp_2m(zero_cost, x, schedule, dpm_ts, sde=sde, generator=g()), theirs)
    euler = plan("euler", schedule, steps)
    euler_ts, sigmas = euler.timesteps, euler.kwargs["sigmas"]
    for cls, ancestral in ((EulerDiscreteScheduler, False), (EulerAncestralDiscreteScheduler, True)):
        ref = cls(**{k: v for k, v in SD.items() if k not in ("clip_sample", "set_alpha_to_one")},
                  timestep_spacing="leading")

        def theirs(x, ref=ref):  # as its pipelines run it: each model input scaled
            ref.set_timesteps(steps)
            generator = g()
            for t in ref.timesteps:
                ref.scale_model_input(x, t)
                x = ref.step(out, t, x, generator=generator).prev_sample
            return x
        yield (f"Euler{' ancestral' if ancestral else ''}",
               lambda x, a=ancestral: sample_euler(zero_cost, x, schedule, euler_ts, sigmas, ancestral=a, generator=g()),
               theirs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--shape", type=int, nargs="+", default=[2, 4, 64, 64])
    args = parser.parse_args()
    x = torch.randn(*args.shape, generator=torch.Generator().manual_seed(0))
    out = torch.randn(*args.shape, generator=torch.Generator().manual_seed(1))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, shape {tuple(args.shape)}, "
          f"{args.steps} steps, median of {args.repeats} loops\n")
    print("| sampler | ours (µs/step) | diffusers (µs/step) | ours / diffusers |")
    print("|---|---:|---:|---:|")
    for name, ours, theirs in cases(args.steps, out):
        ours(x), theirs(x)  # warm-up
        times = {"ours": [], "diffusers": []}
        for _ in range(args.repeats):
            for key, fn in (("ours", ours), ("diffusers", theirs)):
                start = time.perf_counter()
                fn(x)
                times[key].append((time.perf_counter() - start) / args.steps * 1e6)
        a, b = statistics.median(times["ours"]), statistics.median(times["diffusers"])
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
