"""`lvlmva estimate`: tokens and cost of a Critic & Judge run, before anything is paid.

Nothing is sent. Prompt tokens come from the real templates of the task's prompt family rendered
for a typical class (text at about 4 characters a token, images by the model family's rule at
the detail they would be sent with: `--detail`); answer lengths are assumptions you can change
(`--critique-tokens`, and `--reasoning-tokens` for the hidden reasoning of reasoning models,
which OpenAI bills as output and does not publish). The cost is shown at the synchronous list
price and through the Batch API (the price table's batch share)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

from lvlmva.commands.common import Command, add_detail_argument, from_flags

VERDICT_TOKENS_PER_COLOR = 12  # {"color": "green", "verdict": "yes"}, roughly


COMMAND = Command(
    "estimate",
    help="dry-run token and cost estimate of a critique run",
    description="Estimate the tokens and USD a Critic & Judge run will cost. No request is "
    "sent; prices are list prices unless --prices overrides them.",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=int, required=True, help="samples to critique")
    p.add_argument("--critic-model", required=True)
    p.add_argument("--judge-model", help="default: the critic model")
    p.add_argument("--fused", action="store_true", help="one structured-output call per sample")
    p.add_argument("--image-size", type=int, default=336, help="side of each Critic image in px")
    p.add_argument("--clusters", type=int, default=7, help="clusters (colours) per image")
    p.add_argument("--spec", default="decoy-digits", help="task spec (built-in name or file)")
    p.add_argument(
        "--critique-tokens", type=int, default=400, help="assumed length of one critique"
    )
    p.add_argument(
        "--reasoning-tokens", type=int, default=0,
        help="assumed hidden reasoning tokens per call of a reasoning model (default 0)",
    )  # fmt: skip
    add_detail_argument(p)
    p.add_argument("--prices", help="price table file (JSON/YAML/TOML)")
    p.add_argument(
        "--votes", type=int, default=1, help="Critic samples per image, as `align --votes`"
    )
    p.add_argument(
        "--val-jobs", type=int,
        help="validation images critiqued for align's model check (default: as align, "
        "max(100, jobs / 4); 0 when the validation split has usable groups, with align "
        "--val-masks neighbours or for align --critique RUN)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")


@dataclass(frozen=True)
class CallEstimate:
    model: str
    prompt_tokens: int
    completion_tokens: int
    usd: float | None  # None: no price known for the model


@dataclass(frozen=True)
class Estimate:
    jobs: int
    fused: bool
    per_job: tuple[CallEstimate, ...]
    prompt_tokens: int
    completion_tokens: int
    usd: float | None
    unpriced_models: tuple[str, ...]
    batch_usd: float | None = None  # the same requests through the Batch API


@dataclass(frozen=True)
class JobShape:
    """What each Critic & Judge job of the estimate asks for (the fields are the flags')."""

    critic_model: str
    judge_model: str | None = None  # default: the critic model
    fused: bool = False
    image_size: int = 336
    clusters: int = 7
    spec: str = "decoy-digits"
    critique_tokens: int = 400
    reasoning_tokens: int = 0
    detail: str | None = "fit"


def estimate_run(shape: JobShape, *, jobs: int, prices=None) -> Estimate:
    """Tokens and USD of `jobs` Critic & Judge jobs of `shape` (one attempt each, no re-asks),
    for the requests the engine would build (`lvlmva.engine.requests`)."""
    from lvlmva.engine import requests
    from lvlmva.engine.cost import PriceTable, estimate_prompt_tokens
    from lvlmva.engine.model_params import rules_for
    from lvlmva.engine.types import ChatRequest, CritiqueJob, ImagePart, Usage
    from lvlmva.errors import ConfigError
    from lvlmva.prompts import load_prompt_set, load_spec
    from lvlmva.vision.render import PALETTE

    _check_inputs(jobs, shape.image_size, shape.clusters, shape.reasoning_tokens)
    if shape.clusters > len(PALETTE):
        raise ConfigError(f"--clusters must be at most {len(PALETTE)} (one colour each)")
    prices = prices or PriceTable()
    task = load_spec(shape.spec)
    prompts = load_prompt_set(task.family)
    job = CritiqueJob(  # a typical job: images of the given size (their bytes do not count)
        job_id="estimate",
        images=tuple(
            ImagePart(name, b"", width=shape.image_size, height=shape.image_size)
            for name in ("original", "clusters", "overlay")
        ),
        colors=tuple(list(PALETTE)[: shape.clusters]),
        variables=task.variables(task.class_names[0]),
    )
    sampling = requests.Sampling(image_detail=shape.detail)
    verdict_tokens = 8 + VERDICT_TOKENS_PER_COLOR * shape.clusters

    def call(request: ChatRequest, completion_tokens: int) -> CallEstimate:
        prompt = estimate_prompt_tokens(request)
        if rules_for(request.model).reasoning:
            completion_tokens += shape.reasoning_tokens
        price = prices.lookup(request.model)
        usd = None if price is None else price.cost(Usage(prompt, completion_tokens))
        return CallEstimate(request.model, prompt, completion_tokens, usd)

    if shape.fused:
        fused_request = requests.fused_request(
            prompts, job, model=shape.critic_model, sampling=sampling, structured=True
        )
        per_job = (call(fused_request, verdict_tokens),)
    else:
        critic = requests.critic_request(prompts, job, model=shape.critic_model, sampling=sampling)
        judge = requests.judge_request(
            prompts,
            job,
            "x" * (4 * shape.critique_tokens),  # a critique of the assumed length
            model=shape.judge_model or shape.critic_model,
            sampling=sampling,
            structured=True,
        )
        per_job = (call(critic, shape.critique_tokens), call(judge, verdict_tokens))
    unpriced = tuple(sorted({c.model for c in per_job if c.usd is None}))
    usd = None if unpriced else jobs * sum(c.usd or 0.0 for c in per_job)
    return Estimate(
        jobs=jobs,
        fused=shape.fused,
        per_job=per_job,
        prompt_tokens=jobs * sum(c.prompt_tokens for c in per_job),
        completion_tokens=jobs * sum(c.completion_tokens for c in per_job),
        usd=usd,
        unpriced_models=unpriced,
        batch_usd=None if usd is None else usd * prices.batch_share,
    )


def _check_inputs(jobs: int, image_size: int, clusters: int, reasoning_tokens: int) -> None:
    from lvlmva.errors import ConfigError

    for name, value in (("--jobs", jobs), ("--image-size", image_size), ("--clusters", clusters)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1 (got {value})")
    if reasoning_tokens < 0:
        raise ConfigError(f"--reasoning-tokens must not be negative (got {reasoning_tokens})")


def run(args: argparse.Namespace) -> int:
    from lvlmva.engine.cost import PriceTable
    from lvlmva.pipeline.selection import validation_count

    _check_inputs(args.jobs, args.image_size, args.clusters, args.reasoning_tokens)
    prices = PriceTable.from_file(args.prices) if args.prices else PriceTable()
    val_jobs = validation_count(args.jobs, args.val_jobs)
    est = estimate_run(
        from_flags(JobShape, args), jobs=(args.jobs + val_jobs) * max(1, args.votes), prices=prices
    )
    if args.json:
        print(json.dumps(asdict(est)))
        return 0
    roles = ("fused",) if est.fused else ("critic", "judge")
    print(
        f"estimate for {est.jobs} jobs = ({args.jobs} alignment + {val_jobs} validation images) "
        f"x {max(1, args.votes)} vote(s) (no request sent; one answer per call, no re-asks):"
    )
    for role, c in zip(roles, est.per_job, strict=True):
        cost = "no price known" if c.usd is None else f"${c.usd * est.jobs:.4f}"
        print(
            f"  {role:<6} {c.model}: {c.prompt_tokens} in + {c.completion_tokens} out tokens "
            f"per job -> {cost}"
        )
    print(f"  total: {est.prompt_tokens} prompt + {est.completion_tokens} completion tokens")
    from lvlmva.engine.model_params import rules_for

    reasoners = sorted({c.model for c in est.per_job if rules_for(c.model).reasoning})
    if reasoners and not args.reasoning_tokens:
        print(
            f"  note: {', '.join(reasoners)} reason before answering; those hidden tokens are "
            "billed as output and not counted here (give --reasoning-tokens N per call)"
        )
    if est.usd is None:
        print(
            f"  total cost unknown: no price for {', '.join(est.unpriced_models)}; "
            "give one with --prices FILE"
        )
    else:
        where = "--prices" if args.prices else "list"
        print(f"  total cost: ${est.usd:.4f} at {where} prices, ${est.batch_usd:.4f} through the "
              "Batch API (--batch)")  # fmt: skip
    return 0
