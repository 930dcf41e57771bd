"""An LLM judge at any OpenAI-compatible endpoint: which of two answers to the same prompt is better.

Each pair is asked twice, the candidate's answer first and then second, because LLM judges favour one
position (Zheng et al. 2023, "Judging LLM-as-a-Judge", section 3.3, measured on GPT-4 and Claude): the
candidate wins an example only when the judge prefers it in both orders, loses only when it prefers the
champion in both, and ties otherwise, including when a verdict cannot be read; when more than half of the
replies cannot be read the judge is refused (``JudgeError``) rather than turned into ties. Decoding is greedy
(temperature 0) and the verdict is one letter, so a judge costs two short requests per example.

The request goes through ``urllib`` (one JSON POST per verdict; the judge runs inside evaluate's image, which
need not carry an HTTP client library). The bearer token comes from ``$TUNELINE_JUDGE_TOKEN``; on a cluster
that variable would come from a Secret, which tuneline's compilers do not wire yet: the judge is for runs
that can reach the endpoint, such as the local loop against the local endpoint.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

TOKEN_ENV = "TUNELINE_JUDGE_TOKEN"
INSTRUCTIONS = (
    "You compare two answers to the same request. Judge correctness first, then how well the answer follows "
    "the request's format. Reply with one letter: A if answer A is better, B if answer B is better, T if they "
    "are equally good."
)


class JudgeError(RuntimeError):
    """The judge endpoint could not be used (unreachable, refused, or not OpenAI-compatible)."""


@dataclass(frozen=True)
class Contest:
    prompt: str  # the user's request as the models saw it
    candidate: str
    champion: str
    reference: str | None = None  # the held-out answer, shown to the judge when there is one


def verdict(text: str) -> str | None:
    """"A", "B" or "T" from the judge's reply; None when it said something else."""
    words = re.findall(r"[A-Za-z]+", text)
    first = words[0].upper() if words else ""
    return first if first in ("A", "B", "T") else None


class LLMJudge:
    def __init__(self, endpoint: str, model: str, token: str | None = None, timeout_s: float = 120) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise JudgeError(f"judge endpoint {endpoint!r}: expected an http(s) URL of an OpenAI-compatible API "
                             "(…/v1)")
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model = model
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.timeout_s = timeout_s
        self.name = f"llm:{model}@{endpoint}"
        self.unreadable = 0  # verdicts that were neither A, B nor T

    def _ask(self, contest: Contest, first: str, second: str) -> str | None:
        reference = f"Reference answer:\n{contest.reference}\n\n" if contest.reference is not None else ""
        content = (f"Request:\n{contest.prompt}\n\n{reference}Answer A:\n{first}\n\nAnswer B:\n{second}\n\n"
                   "Which answer is better? Reply A, B or T.")
        body = {"model": self.model, "temperature": 0, "max_tokens": 2,
                "messages": [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": content}]}
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.token}"}
                                                           if self.token else {})}
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as err:
            hint = f"; set ${TOKEN_ENV}" if err.code == 401 and not self.token else ""
            raise JudgeError(f"judge {self.url}: HTTP {err.code}{hint}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise JudgeError(f"judge {self.url}: {getattr(err, 'reason', err)}") from None
        except json.JSONDecodeError:
            raise JudgeError(f"judge {self.url}: the reply is not JSON (not an OpenAI-compatible API?)") from None
        try:
            text = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge {self.url}: no choices[0].message.content in the reply") from None
        found = verdict(text)
        self.unreadable += found is None
        return found

    def outcome(self, contest: Contest) -> float:
        """1 (candidate better in both orders), 0 (champion better in both), else 0.5."""
        first = self._ask(contest, contest.candidate, contest.champion)  # candidate is A
        second = self._ask(contest, contest.champion, contest.candidate)  # candidate is B
        if first == "A" and second == "B":
            return 1.0
        if first == "B" and second == "A":
            return 0.0
        return 0.5

    def outcomes(self, contests: Sequence[Contest]) -> list[float]:
        """One outcome per contest. When most replies cannot be read the judge has not judged: its ties would
        make a win rate of 0.5 with a narrow interval out of nothing, so that is an error, not a result."""
        before = self.unreadable
        results = [self.outcome(c) for c in contests]
        unreadable, asked = self.unreadable - before, 2 * len(contests)
        if asked and unreadable * 2 > asked:
            raise JudgeError(f"judge {self.url}: {unreadable} of {asked} replies were not A, B or T (a model that "
                             "writes more than one word first cannot answer in 2 tokens)")
        return results
