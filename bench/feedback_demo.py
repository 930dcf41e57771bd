"""The closed feedback loop on this machine: served traffic and ratings become preference data, the champion is
trained further on it, and the challenger is judged against the champion and canaried or not.

Run as: make feedback-demo
        (python bench/feedback_demo.py [--users 48] [--max-tokens 64] [--canary-requests 150])

The users are scripted and say so: they are the held-out validation prompts of the champion's own run (tickets it
never trained on), and the rater knows the reference answer. Nothing else is simulated: every request goes
through the local endpoint's OpenAI API with its bearer token, every rating through ``POST /v1/feedback``, the
export through ``tuneline feedback export``, and the loop through ``tuneline run pipelines/feedback.yaml``.

1. The champion: ``tuneline run pipelines/finetune.yaml`` (its cached steps are reused; deploy serves the
   champion locally).
2. Users: each prompt is sent twice, greedy and sampled (temperature 1.0), so one conversation can get two
   different answers.
3. The rater: rating = 1 + round(4 x field accuracy of the answer against the reference), the task's own
   metric; an answer rated 2 or less is corrected with the reference, as a support agent fixing the triage
   would. ``--kind pairs`` then pairs the better answer against the worse one, or the correction against the
   served answer.
4. The loop: ``pipelines/feedback.yaml`` on the export: DPO on the champion, the win rate against it on the
   champion run's test split (95% interval), register and canary when ``win_rate.lower > 0.5``.
5. The canary, when there is one: more user traffic until the proxy promotes or rolls it back.

Figures go to bench/results/feedback-demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tuneline import settings  # noqa: E402
from tuneline.llm.ml.models import SUMMARY_FILE  # noqa: E402
from tuneline.targets.local.record import list_runs  # noqa: E402


def tuneline(*args: str) -> None:
    command = [sys.executable, "-m", "tuneline", *args]
    print("$ tuneline " + " ".join(args), flush=True)
    if subprocess.run(command, cwd=ROOT).returncode != 0:
        raise SystemExit(f"tuneline {args[0]} failed")


def latest_run(pipeline: str) -> dict:
    runs = [r for r in list_runs(settings.home() / "runs") if r["pipeline"] == pipeline]
    if not runs:
        raise SystemExit(f"no run of {pipeline}")
    return runs[-1]


def post(url: str, token: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def rating(answer: str, reference: str) -> int:
    from tuneline.llm.ml.metrics import example_scores

    return 1 + round(4 * example_scores("field_accuracy", [answer], [reference])[0])


def endpoint() -> tuple[str, str, str]:
    from tuneline.serving.auth import load_token, token_path
    from tuneline.serving.local import status

    state = settings.serve_state_dir()
    proxy = status(state)["proxy"]
    if not proxy or not proxy["alive"]:
        raise SystemExit(f"no endpoint is serving (tuneline serve status: {state})")
    url, token = proxy["url"], load_token(token_path(state))
    request = urllib.request.Request(f"{url}/v1/models", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        model = json.loads(response.read())["data"][0]["id"]
    return url, token, model


def play_users(examples, url: str, token: str, model: str, max_tokens: int) -> dict:
    """Each prompt answered greedily and sampled; every answer rated, the poor ones corrected."""
    ratings, corrected, answers = [], 0, 0
    for example in examples:
        for temperature in (0.0, 1.0):
            status, reply = post(f"{url}/v1/chat/completions", token, {
                "model": model, "messages": example.prompt, "max_tokens": max_tokens,
                "temperature": temperature})
            if status != 200:
                raise SystemExit(f"chat completion: HTTP {status}: {reply}")
            answers += 1
            score = rating(reply["choices"][0]["message"]["content"], example.answer)
            feedback = {"request_id": reply["id"], "rating": score}
            if score <= 2:
                feedback["correction"] = example.answer
                corrected += 1
            status, body = post(f"{url}/v1/feedback", token, feedback)
            if status != 200:
                raise SystemExit(f"feedback: HTTP {status}: {body}")
            ratings.append(score)
    return {"prompts": len(examples), "answers": answers, "corrected": corrected,
            "ratings": {str(r): ratings.count(r) for r in range(1, 6)}}


def drive_canary(examples, url: str, token: str, model: str, limit: int, max_tokens: int, since: float) -> dict:
    """User traffic until the proxy decides the canary (promote or roll back), at most `limit` requests; a
    decision recorded before `since` is an earlier canary's."""
    sent = 0
    while sent < limit:
        example = examples[sent % len(examples)]
        post(f"{url}/v1/chat/completions", token, {"model": model, "messages": example.prompt,
                                                   "max_tokens": max_tokens})
        sent += 1
        request = urllib.request.Request(f"{url}/v1/stats", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            canary = json.loads(response.read()).get("canary") or {}
        if canary.get("decision") and canary.get("time", 0) > since:
            return {"requests": sent, "decision": canary["decision"], "reason": canary.get("reason")}
    return {"requests": sent, "decision": None}


def main() -> int:
    from tuneline.llm.ml.data import read_split

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=48, help="held-out prompts the scripted users send")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--canary-requests", type=int, default=150, help="most user requests to drive the canary")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "feedback-demo.json")
    args = p.parse_args()
    os.chdir(ROOT)
    started = time.time()

    tuneline("run", "pipelines/finetune.yaml")
    champion_run = latest_run("finetune-demo")
    steps = champion_run["steps"]
    if steps["deploy"]["status"] not in ("succeeded",):
        raise SystemExit(f"the champion is not served (deploy: {steps['deploy']['status']})")
    validation = read_split(steps["prepare"]["outputs"]["validation"]["path"], limit=args.users)
    model_dir = Path(steps["train"]["outputs"]["model"]["path"])
    system = json.loads((model_dir / SUMMARY_FILE).read_text()).get("system_prompt") or ""
    url, token, model = endpoint()

    t0 = time.time()
    users = play_users(validation.records, url, token, model, args.max_tokens)
    users["seconds"] = round(time.time() - t0, 1)
    print(f"users: {users}", flush=True)

    log = settings.default_request_log()
    pairs = settings.home() / "feedback" / "pairs.jsonl"
    tuneline("feedback", "export", "--kind", "pairs", "--log", str(log), "--out", str(pairs),
             *(["--system", system] if system else []))
    n_pairs = sum(1 for _ in pairs.open())

    loop_started = time.time()
    tuneline("run", "pipelines/feedback.yaml", "--set", f"feedback={pairs}", "--set", "canary_promote_after=20")
    loop = latest_run("feedback-loop")
    loop_steps = loop["steps"]
    metrics = json.loads(Path(loop_steps["evaluate"]["outputs"]["metrics"]["path"]).read_text())
    passed = bool(metrics["gates"]["passed"])
    result = {
        "champion_run": champion_run["run_id"], "loop_run": loop["run_id"], "users": users,
        "pairs_exported": n_pairs,
        "field_accuracy": {m: metrics["models"][m].get("field_accuracy") for m in metrics["models"]},
        "win_rate": metrics.get("win_rate"), "gates": metrics["gates"]["expression"], "gate_passed": passed,
        "register": loop_steps["register"]["status"], "deploy": loop_steps["deploy"]["status"],
    }
    if passed and loop_steps["deploy"]["status"] == "succeeded":
        result["canary"] = drive_canary(validation.records, url, token, model, args.canary_requests, args.max_tokens,
                                        loop_started)
    result["seconds"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    wr = result["win_rate"] or {}
    print(f"challenger field accuracy {result['field_accuracy'].get('tuned')} vs champion "
          f"{result['field_accuracy'].get('champion')}; win rate {wr.get('value')} (95% CI {wr.get('lower')}-"
          f"{wr.get('upper')}); gate {'passed' if passed else 'failed'}: promoted "
          f"{'by canary' if result.get('canary', {}).get('decision') == 'promoted' else 'no'}")
    print(f"wrote {args.out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
