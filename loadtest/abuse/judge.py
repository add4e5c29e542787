"""Judging the abuse suite's answers: every request ends in one of :data:`OUTCOMES`.

``clean_error`` (4xx or gRPC status with a message, or a per-item ``error``), ``answered`` (a right answer),
``wrong_answer`` (numbers for garbage, numbers without a face, a refused well-formed request, an admin call that
worked without the key), ``server_error`` (HTTP 5xx other than the door's 503, gRPC INTERNAL/UNKNOWN/DATA_LOSS),
``unavailable`` (503 / UNAVAILABLE), ``no_answer`` (connection dropped, timeout).
"""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass

import grpc
import numpy as np

from common import contract
from loadtest.abuse import cases
from loadtest.abuse.send import Sender

OUTCOMES = ("clean_error", "answered", "wrong_answer", "server_error", "unavailable", "no_answer")


@dataclass
class Result:
    category: str
    protocol: str
    outcome: str
    detail: str = ""
    seconds: float = 0.0


def check_items(outputs: dict, case: cases.Case) -> tuple[list[str], bool]:
    """Contract violations of a 200 answer to an ensemble, and whether any item carries an error."""
    needed = (*contract.ESTIMATE_OUTPUTS, contract.ENSEMBLE_SCORE)
    if any(o not in outputs for o in needed):
        return [f"answer lacks outputs {sorted(set(needed) - set(outputs))}"], False
    age = outputs[contract.ENSEMBLE_AGE].reshape(-1)
    low = outputs[contract.ENSEMBLE_AGE_LOW].reshape(-1)
    high = outputs[contract.ENSEMBLE_AGE_HIGH].reshape(-1)
    prob = outputs[contract.ENSEMBLE_FEMALE].reshape(-1)
    found = outputs[contract.ENSEMBLE_FOUND].reshape(-1)
    score = outputs[contract.ENSEMBLE_SCORE].reshape(-1)
    gender = [g.decode() if isinstance(g, bytes) else str(g) for g in outputs[contract.ENSEMBLE_GENDER].reshape(-1)]
    error = [
        e.decode(errors="replace") if isinstance(e, bytes) else str(e)
        for e in outputs[contract.ENSEMBLE_ERROR].reshape(-1)
    ]
    expects = case.expect.items or ("any",) * len(age)
    if len(age) != len(expects):
        return [f"{len(age)} items answered for {len(expects)} sent"], False
    bad = []
    for j, want in enumerate(expects):
        face = bool(found[j]) and not error[j]
        if not face and not (np.isnan([age[j], low[j], high[j], prob[j]]).all() and gender[j] == ""):
            bad.append(
                f"item {j}: numbers without a face (age {age[j]} [{low[j]}, {high[j]}], p {prob[j]}, "
                f"gender {gender[j]!r})"
            )
        if face and not (np.isfinite(age[j]) and 0 <= prob[j] <= 1 and gender[j] in ("male", "female")):
            bad.append(f"item {j}: face found but age {age[j]}, p {prob[j]}, gender {gender[j]!r}")
        # The interval: both ends NaN (an age model without one) or an ordered pair of finite ages.
        ends = np.array([low[j], high[j]])
        if face and not (np.isnan(ends).all() or (np.isfinite(ends).all() and ends[0] <= ends[1])):
            bad.append(f"item {j}: face found but age interval [{low[j]}, {high[j]}]")
        if face and case.model == cases.CROP and not np.isnan(score[j]):
            bad.append(f"item {j}: crop path reports detection_score {score[j]} (no detector ran)")
        if want == "error" and not error[j]:
            bad.append(f"item {j}: garbage accepted without an error (face_found {bool(found[j])}, age {age[j]})")
        if want == "noface" and face:
            bad.append(f"item {j}: a face found where there is none (age {age[j]})")
        if want == "face" and not face:
            bad.append(f"item {j}: the face was missed (error {error[j]!r})")
    return bad, any(error)


def judge(case: cases.Case, status: int, message: str, outputs: dict | None) -> tuple[str, str]:
    if status == 200:
        if case.kind.endswith("admin"):
            return "wrong_answer", "admin call succeeded without the key"
        bad, any_error = check_items(outputs or {}, case)
        if bad:
            return "wrong_answer", "; ".join(bad[:3])
        if case.expect.request == "error" and not (any_error and all(_all_errors(outputs))):
            return "wrong_answer", f"answered a request that must be refused ({case.note or case.spec})"
        return ("clean_error" if any_error else "answered"), ""
    if status == 503:
        return "unavailable", message
    if status >= 500:
        return "server_error", f"HTTP {status}: {message}"
    if case.expect.request == "items":
        return "wrong_answer", f"well-formed request refused: HTTP {status}: {message}"
    return ("clean_error" if message else "server_error"), f"HTTP {status}: {message or '(no message)'}"


def _all_errors(outputs: dict) -> list[bool]:
    return [bool(e) for e in outputs[contract.ENSEMBLE_ERROR].reshape(-1)]


def judge_rpc_error(case: cases.Case, err: grpc.RpcError) -> tuple[str, str]:
    code, details = err.code(), err.details() or ""
    if case.kind.endswith("admin") and details:
        return "clean_error", f"{code.name}: {details}"  # Triton 2.51 refuses restricted protocols as UNAVAILABLE
    if code == grpc.StatusCode.UNAVAILABLE:
        return "unavailable", details
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no_answer", "deadline exceeded"
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS):
        return "server_error", f"{code.name}: {details}"
    if case.expect.request == "items":
        return "wrong_answer", f"well-formed request refused: {code.name}: {details}"
    return ("clean_error" if details else "server_error"), f"{code.name}: {details}"


def run_case(sender: Sender, case: cases.Case) -> Result:
    start = time.monotonic()
    try:
        status, message, outputs = sender.send(case)
        outcome, detail = judge(case, status, message, outputs)
    except grpc.RpcError as err:
        outcome, detail = judge_rpc_error(case, err)
    except (OSError, http.client.HTTPException) as err:
        if case.expect.close_ok and not isinstance(err, TimeoutError):
            outcome, detail = "clean_error", f"connection closed ({type(err).__name__})"
        else:
            outcome, detail = "no_answer", f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - an unparseable answer is a finding, not a crash of the suite
        outcome, detail = "server_error", f"unparseable answer: {type(err).__name__}: {err}"
    return Result(case.category, case.protocol, outcome, detail, time.monotonic() - start)
