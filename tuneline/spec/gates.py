"""Safe evaluation of quality-gate expressions such as
``tuned.exact_match >= 0.8 and tuned.exact_match - base.exact_match >= 0.3``.

The expression is parsed with ``ast`` and interpreted here over a whitelist of node types: numbers,
``model.metric`` references, ``+ - * /``, unary ``-``/``not``, comparisons, ``and``/``or`` and parentheses.
Nothing is ever passed to ``eval``: names, calls, subscripts and everything else are rejected.

A gate may be written for any metric: ``expand`` replaces ``{metric}`` with the gate metric and ``{better}`` with
the comparison that means "better" for it (``>``, or ``<`` for perplexity; ``tuneline.llm.ml.metrics.direction``),
so ``tuned.{metric} {better} base.{metric}`` holds whichever metric a pipeline's ``gate_metric`` names.

A model that is known but absent from this evaluation (``champion`` before any model was promoted)
makes every comparison that refers to it true: there is nothing to beat yet.

``win_rate`` is not a model but the candidate's contest with the champion, judged per example
(``tuneline.llm.ml.winrate``): ``win_rate.value``, ``.lower`` and ``.upper`` (its 95% interval), ``.wins``,
``.ties``, ``.losses`` and ``.n``. Without a champion it is absent like the champion, so
``win_rate.lower > 0.5`` holds for a first model.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass

KNOWN_MODELS = ("base", "tuned", "champion", "win_rate")


def expand(template: str, metric: str) -> str:
    """``template`` with ``{metric}`` and ``{better}`` filled in for ``metric`` (see the module docstring)."""
    from tuneline.spec.metrics import direction

    name = metric.removeprefix("tuned.")
    return template.replace("{metric}", name).replace("{better}", "<" if direction(name) == "min" else ">")


class GateError(ValueError):
    """The gate expression is malformed or names an unknown model or metric."""


class _Absent:
    """The value of a metric of a model that is not part of this evaluation."""


ABSENT = _Absent()

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_CMPOPS = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
           ast.Eq: operator.eq, ast.NotEq: operator.ne}


@dataclass(frozen=True)
class Clause:
    text: str
    value: bool


@dataclass(frozen=True)
class GateResult:
    expression: str
    passed: bool
    clauses: list[Clause]  # the top-level ``and`` terms, for the report


class Gate:
    def __init__(self, expression: str) -> None:
        self.expression = expression.strip()
        if not self.expression:
            raise GateError("gate expression is empty")
        try:
            self.tree = ast.parse(self.expression, mode="eval")
        except SyntaxError as err:
            raise GateError(f"gate expression {expression!r}: syntax error at column {err.offset}: {err.msg}") from err
        self.references = self._check(self.tree.body)

    def _check(self, node: ast.AST) -> set[tuple[str, str]]:
        """Reject any node outside the whitelist; return the (model, metric) pairs referenced."""
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return set()
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id not in KNOWN_MODELS:
                raise GateError(f"unknown model {node.value.id!r} in gate (use one of {', '.join(KNOWN_MODELS)})")
            return {(node.value.id, node.attr)}
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return self._check(node.left) | self._check(node.right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd | ast.Not):
            return self._check(node.operand)
        if isinstance(node, ast.Compare) and all(type(op) in _CMPOPS for op in node.ops):
            refs = self._check(node.left)
            for comparator in node.comparators:
                refs |= self._check(comparator)
            return refs
        if isinstance(node, ast.BoolOp):
            refs: set[tuple[str, str]] = set()
            for value in node.values:
                refs |= self._check(value)
            return refs
        snippet = ast.get_source_segment(self.expression, node) or type(node).__name__
        raise GateError(f"gate expression {self.expression!r}: {snippet!r} is not allowed "
                        "(only numbers, model.metric, + - * /, comparisons, and/or/not)")

    def evaluate(self, metrics: dict[str, dict[str, float]]) -> GateResult:
        for model, metric in sorted(self.references):
            if model in metrics and metric not in metrics[model]:
                raise GateError(f"unknown metric {metric!r} for {model} in gate "
                                f"(available: {', '.join(sorted(metrics[model]))})")
        body = self.tree.body
        terms = body.values if isinstance(body, ast.BoolOp) and isinstance(body.op, ast.And) else [body]
        clauses = [Clause(ast.get_source_segment(self.expression, t) or "", bool(self._eval(t, metrics)))
                   for t in terms]
        return GateResult(self.expression, bool(self._eval(body, metrics)), clauses)

    def _eval(self, node: ast.AST, metrics: dict[str, dict[str, float]]):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Attribute):
            model = metrics.get(node.value.id)
            return ABSENT if model is None else float(model[node.attr])
        if isinstance(node, ast.BinOp):
            left, right = self._eval(node.left, metrics), self._eval(node.right, metrics)
            if left is ABSENT or right is ABSENT:
                return ABSENT
            if isinstance(node.op, ast.Div) and right == 0:
                raise GateError(f"gate expression {self.expression!r}: division by zero")
            return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, metrics)
            if isinstance(node.op, ast.Not):
                return not value
            if value is ABSENT:
                return ABSENT
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, metrics)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self._eval(comparator, metrics)
                if left is not ABSENT and right is not ABSENT and not _CMPOPS[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.BoolOp):
            values = [bool(self._eval(v, metrics)) for v in node.values]
            return all(values) if isinstance(node.op, ast.And) else any(values)
        raise GateError(f"unexpected node {type(node).__name__}")  # unreachable after _check
