"""What the gate (serving/runtime/gate.py) lets through to Triton: pure checks, no I/O.

Triton 2.51 multiplies declared dimensions in 64-bit arithmetic that silently wraps: ``[2**62, 64, 64, 3]`` or
``[2**32 + 1, 1]`` pass its size checks, the dynamic batcher then sees a truncated batch size and mixes other
callers' rows into the answer (issue 18). So every inference request is held against the exact tensor schema of
the public model it names, before Triton parses it: a whitelist, not a list of known-bad shapes.

:data:`PUBLIC_INPUTS` repeats what the public models' ``config.pbtxt`` declare (``tests/test_gate.py`` compares
them, so a config change that forgets this table fails the tests).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from common import contract
from serving.runtime.security import ADMIN_HEADER

#: Refusal codes, named as gRPC status codes; gate.py maps them to HTTP statuses.
INVALID_ARGUMENT = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"
PERMISSION_DENIED = "PERMISSION_DENIED"


@dataclass(frozen=True)
class Tensor:
    """One input as the config declares it: Triton datatype and dims after the batch dimension."""

    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Model:
    #: 0 = the model has no batch dimension (the request shape is exactly ``dims``).
    max_batch_size: int
    inputs: dict[str, Tensor]


_IMAGE = {contract.IMAGE_INPUT: Tensor("BYTES", (1,))}
#: The public models (common.contract.PUBLIC_MODELS) and their inputs, as their config.pbtxt declare them.
PUBLIC_INPUTS: dict[str, Model] = {
    contract.DETECT_ENSEMBLE: Model(32, _IMAGE),
    contract.CROP_ENSEMBLE: Model(32, _IMAGE),
    contract.FACES_MODEL: Model(0, _IMAGE),
}
assert set(PUBLIC_INPUTS) == set(contract.PUBLIC_MODELS)

#: Request-level parameters passed on. Everything else (``timeout``, ``priority``, sequence controls, custom
#: keys) is refused: none of our models uses them, and a request timeout is one more way to cancel an ensemble.
ALLOWED_REQUEST_PARAMETERS = frozenset({"binary_data_output"})
#: Shared-memory parameters: passed on only with the admin key. Registering a region needs the key, but Triton's
#: regions are one table for every caller: a stranger naming an admin's region read its contents through inference
#: and wrote an output over it (audit, 2026-12-05). Triton checks a region against the validated shape's size.
SHARED_MEMORY_PARAMETERS = frozenset({"shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"})
#: Per-input parameters passed on: the HTTP binary extension's size, and shared memory (admins only).
ALLOWED_INPUT_PARAMETERS = frozenset({"binary_data_size"}) | SHARED_MEMORY_PARAMETERS
#: Per-output parameters passed on: the binary extension's flag, and shared memory as for inputs.
ALLOWED_OUTPUT_PARAMETERS = frozenset({"binary_data"}) | SHARED_MEMORY_PARAMETERS
#: The type each passed-on parameter must have. Triton 2.51 reads a JSON parameter of another type as its own
#: failure: ``"binary_data": "yes"`` got HTTP 500 ("attempt to access JSON non-boolean as boolean"), a server error
#: for a caller's mistake, which callers retry and monitors page on. gRPC names the type in the parameter's oneof.
PARAMETER_TYPES: dict[str, type] = {
    "binary_data_output": bool,
    "binary_data": bool,
    "binary_data_size": int,
    "shared_memory_region": str,
    "shared_memory_byte_size": int,
    "shared_memory_offset": int,
}
_GRPC_PARAMETER_FIELDS = {bool: ("bool_param",), int: ("int64_param", "uint64_param"), str: ("string_param",)}
assert set(PARAMETER_TYPES) == ALLOWED_REQUEST_PARAMETERS | ALLOWED_INPUT_PARAMETERS | ALLOWED_OUTPUT_PARAMETERS
#: Longest name echoed back in a refusal (names are caller-chosen: a 5,000-character one must not fill headers).
NAME_ECHO = 80


class Refused(Exception):
    """A request the gate does not pass on; ``code`` is a gRPC status name, ``args[0]`` the message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def echo(name: object) -> str:
    text = str(name)
    return repr(text if len(text) <= NAME_ECHO else text[:NAME_ECHO] + "...")


#: An ensemble's outputs that its first step (preprocess) gives directly. Triton 2.51 cannot answer a request that
#: names only some of them: "unexpected deadlock, at least one output is not set" (HTTP 400 / INVALID_ARGUMENT, for
#: every one or two of the four; found by the bad-input audit of 2026-12-05). The gate asks for :data:`COMPANION`
#: too and takes it out of the answer (:func:`companion_needed`).
EARLY_OUTPUTS = frozenset(
    (contract.ENSEMBLE_BOX, contract.ENSEMBLE_SCORE, contract.ENSEMBLE_FOUND, contract.ENSEMBLE_ERROR)
)
#: An output of the ensembles' last step, one float per image: the cheapest to ask for and drop.
COMPANION = contract.ENSEMBLE_AGE


def companion_needed(model_name: str, outputs: list[str]) -> bool:
    """Whether a request for ``outputs`` of ``model_name`` must also ask for :data:`COMPANION` (EARLY_OUTPUTS)."""
    ensembles = (contract.DETECT_ENSEMBLE, contract.CROP_ENSEMBLE)
    return model_name in ensembles and bool(outputs) and set(outputs) <= EARLY_OUTPUTS


def model_for(name: str) -> Model:
    model = PUBLIC_INPUTS.get(name)
    if model is None:
        public = ", ".join(contract.PUBLIC_MODELS)
        raise Refused(NOT_FOUND, f"model {echo(name)} is not a public model (public: {public})")
    return model


def check_shape(model_name: str, model: Model, input_name: str, shape: list) -> int:
    """Validates a declared shape against the model's schema; returns its element count."""
    spec = model.inputs[input_name]
    dims = list(shape)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise Refused(INVALID_ARGUMENT, f"input {echo(input_name)}: shape must be a list of integers")
    if model.max_batch_size:
        expected = f"[batch, {', '.join(map(str, spec.dims))}] with 1 <= batch <= {model.max_batch_size}"
        ok = len(dims) == 1 + len(spec.dims) and 1 <= dims[0] <= model.max_batch_size and tuple(dims[1:]) == spec.dims
    else:
        expected = str(list(spec.dims))
        ok = tuple(dims) == spec.dims
    if not ok:
        shown = str(dims) if len(str(dims)) <= 200 else str(dims)[:200] + "...]"
        raise Refused(INVALID_ARGUMENT, f"input {echo(input_name)} of {model_name!r}: shape {shown} is not {expected}")
    return math.prod(dims)


def check_datatype(model_name: str, model: Model, input_name: str, datatype: str) -> None:
    if input_name not in model.inputs:
        raise Refused(
            INVALID_ARGUMENT, f"{model_name!r} has no input {echo(input_name)} (inputs: {', '.join(model.inputs)})"
        )
    if datatype != model.inputs[input_name].datatype:
        raise Refused(
            INVALID_ARGUMENT,
            f"input {echo(input_name)} of {model_name!r} must be {model.inputs[input_name].datatype}, "
            f"got {echo(datatype)}",
        )


def check_bytes_elements(input_name: str, raw: bytes | memoryview, count: int) -> None:
    """BYTES tensors travel as ``count`` elements, each a 4-byte little-endian length and that many bytes."""
    view = memoryview(raw)
    offset = 0
    for _ in range(count):
        if offset + 4 > len(view):
            break
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4 + length
    else:
        if offset == len(view):
            return
    raise Refused(
        INVALID_ARGUMENT,
        f"input {echo(input_name)}: its {len(view)} bytes do not hold exactly {count} length-prefixed elements "
        "(as the declared shape says)",
    )


def check_parameters(keys, allowed: frozenset[str], where: str) -> None:
    extra = sorted(set(keys) - allowed)
    if extra and extra[0] in SHARED_MEMORY_PARAMETERS:
        raise Refused(PERMISSION_DENIED, f"{where} parameter {extra[0]!r}: shared memory needs the {ADMIN_HEADER} key")
    if extra:
        raise Refused(INVALID_ARGUMENT, f"{where} parameter {echo(extra[0])} is not accepted")


def allowed_for(allowed: frozenset[str], admin: bool) -> frozenset[str]:
    """``allowed`` for this caller: without the admin key, no shared memory."""
    return allowed if admin else allowed - SHARED_MEMORY_PARAMETERS


def _wrong_type(where: str, key: str) -> Refused:
    return Refused(INVALID_ARGUMENT, f"{where} parameter {key!r} must be {PARAMETER_TYPES[key].__name__}")


def check_grpc_parameters(parameters, allowed: frozenset[str], where: str) -> None:
    """Only ``allowed`` keys, each holding its :data:`PARAMETER_TYPES` type (a map of ``InferParameter``)."""
    check_parameters(parameters.keys(), allowed, where)
    for key, value in parameters.items():
        if value.WhichOneof("parameter_choice") not in _GRPC_PARAMETER_FIELDS[PARAMETER_TYPES[key]]:
            raise _wrong_type(where, key)


def check_json_parameters(parameters: object, allowed: frozenset[str], where: str) -> None:
    """An HTTP request's ``parameters`` object: only ``allowed`` keys, each of its :data:`PARAMETER_TYPES` type."""
    if not isinstance(parameters, dict):
        raise Refused(INVALID_ARGUMENT, f"{where} parameters must be an object")
    check_parameters(parameters, allowed, where)
    for key, value in parameters.items():
        kind = PARAMETER_TYPES[key]
        # JSON's true is a Python int too: a count must not be a boolean, nor a flag a number.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise _wrong_type(where, key)


def check_all_inputs(model_name: str, model: Model, names: list[str]) -> None:
    if sorted(names) != sorted(model.inputs):
        raise Refused(
            INVALID_ARGUMENT,
            f"{model_name!r} takes exactly the inputs {', '.join(model.inputs)}; got {len(names)} input(s)",
        )


def check_id(request_id: str) -> None:
    """A request id Triton would echo cut short: it keeps a C string, which ends at the first NUL, so a caller
    matching answers by id would get another id back (red-team probe, 2026-12-07)."""
    if "\0" in request_id:
        raise Refused(INVALID_ARGUMENT, "the request 'id' must not contain a NUL character (Triton would cut it there)")


# -- gRPC ------------------------------------------------------------------------------------------------------


def check_grpc_infer(request, admin: bool = False) -> None:
    """Validates a ``inference.ModelInferRequest`` (tritonclient.grpc.service_pb2); raises :class:`Refused`.
    ``admin``: the caller presented the admin key (shared memory allowed)."""
    model = model_for(request.model_name)
    name = request.model_name
    check_id(request.id)
    check_grpc_parameters(request.parameters, ALLOWED_REQUEST_PARAMETERS, "request")
    for output in request.outputs:
        check_grpc_parameters(
            output.parameters, allowed_for(ALLOWED_OUTPUT_PARAMETERS, admin), f"output {echo(output.name)}"
        )
    check_all_inputs(name, model, [i.name for i in request.inputs])
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise Refused(INVALID_ARGUMENT, "raw_input_contents must hold one entry per input")
    for index, tensor in enumerate(request.inputs):
        check_datatype(name, model, tensor.name, tensor.datatype)
        count = check_shape(name, model, tensor.name, tensor.shape)
        check_grpc_parameters(
            tensor.parameters, allowed_for(ALLOWED_INPUT_PARAMETERS, admin), f"input {echo(tensor.name)}"
        )
        shm = "shared_memory_region" in tensor.parameters
        has_contents = tensor.HasField("contents")
        if raw:
            if shm or has_contents:
                raise Refused(INVALID_ARGUMENT, f"input {echo(tensor.name)}: data given twice")
            check_bytes_elements(tensor.name, raw[index], count)
        elif has_contents:
            if shm or len(tensor.contents.bytes_contents) != count:
                raise Refused(
                    INVALID_ARGUMENT,
                    f"input {echo(tensor.name)}: contents must hold exactly {count} bytes_contents elements",
                )
        elif not shm:
            raise Refused(INVALID_ARGUMENT, f"input {echo(tensor.name)} has no data")


# -- HTTP ------------------------------------------------------------------------------------------------------


def _flatten(data, out: list) -> None:
    if isinstance(data, list):
        for item in data:
            _flatten(item, out)
    else:
        out.append(data)


def check_http_infer(model_name: str, header: object, binary: bytes | memoryview, admin: bool = False) -> None:
    """Validates the JSON part of an HTTP infer request and the binary part that follows it; ``admin``: the
    caller presented the admin key (shared memory allowed)."""
    model = model_for(model_name)
    if not isinstance(header, dict):
        raise Refused(INVALID_ARGUMENT, "the request JSON must be an object")
    check_json_parameters(header.get("parameters", {}), ALLOWED_REQUEST_PARAMETERS, "request")
    # Triton 2.51 answers a wrongly typed 'id' or 'outputs' with HTTP 500 ("Unable to parse 'id': attempt to
    # access JSON non-string as string"): the caller's mistake must read as one.
    if not isinstance(header.get("id", ""), str):
        raise Refused(INVALID_ARGUMENT, "the request 'id' must be a string")
    check_id(header.get("id", ""))
    outputs = header.get("outputs", [])
    named = isinstance(outputs, list) and all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)
    if not named:
        raise Refused(INVALID_ARGUMENT, "'outputs' must be a list of objects, each with a string 'name'")
    for output in outputs:
        where = f"output {echo(output['name'])}"
        check_json_parameters(output.get("parameters", {}), allowed_for(ALLOWED_OUTPUT_PARAMETERS, admin), where)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise Refused(INVALID_ARGUMENT, "the request JSON needs 'inputs', a list of objects")
    check_all_inputs(model_name, model, [str(i.get("name")) for i in inputs])
    offset = 0
    view = memoryview(binary)
    for tensor in inputs:
        input_name = str(tensor["name"])
        check_datatype(model_name, model, input_name, tensor.get("datatype"))
        shape = tensor.get("shape")
        if not isinstance(shape, list):
            raise Refused(INVALID_ARGUMENT, f"input {echo(input_name)}: 'shape' must be a list")
        count = check_shape(model_name, model, input_name, shape)
        tparams = tensor.get("parameters", {})
        check_json_parameters(tparams, allowed_for(ALLOWED_INPUT_PARAMETERS, admin), f"input {echo(input_name)}")
        size = tparams.get("binary_data_size")
        if size is not None:
            if size < 0 or offset + size > len(view):  # an int: check_json_parameters
                raise Refused(
                    INVALID_ARGUMENT, f"input {echo(input_name)}: binary_data_size does not fit the request body"
                )
            check_bytes_elements(input_name, view[offset : offset + size], count)
            offset += size
        elif "data" in tensor:
            values: list = []
            _flatten(tensor["data"], values)
            if len(values) != count or not all(isinstance(v, str) for v in values):
                raise Refused(INVALID_ARGUMENT, f"input {echo(input_name)}: 'data' must hold {count} strings")
        elif "shared_memory_region" not in tparams:
            raise Refused(INVALID_ARGUMENT, f"input {echo(input_name)} has no data")
    if offset != len(view):
        raise Refused(
            INVALID_ARGUMENT,
            f"the binary part is {len(view)} bytes but the inputs' binary_data_size add up to {offset}",
        )
