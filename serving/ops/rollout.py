"""Switches the version a running Triton serves, without a failed request: rollout and rollback.

    python -m serving.ops.rollout --model age                # serve the newest version in the repository
    python -m serving.ops.rollout --model age --version 20   # roll back (or pin) to version 20
    python -m serving.ops.rollout --model age --status       # which versions are ready now

Triton must run under explicit model control: a default ``make serve`` from a local folder, compose, the Triton
image's default command and the KServe runtime all do; for an ``s3://`` repository pass ``--model-control-mode
explicit`` to the launcher, so that Triton reads the bucket itself and sees versions published later.
Both moves are one call to Triton's repository API, ``POST /v2/repository/models/<model>/load``: Triton reads the model
folder again (local or s3://), loads the chosen version beside the one serving,
moves new requests to it once it is ready, lets requests in flight on the old one
finish, then unloads it. A version that fails to load leaves the old one serving (and the server ready, though
Triton 2.51's own readiness says no from then on: docs/serverless.md).

- Rollout: the model loaded again from the repository as it stands, its config there included (so a config
  published with the new version takes effect) and the version(s) that config serves: the newest. After a
  rollback with nothing changed in the repository, Triton keeps the pin through that load, so the loaded config
  is sent once more with the repository's policy, the newest version.
- Rollback/pin: the model's current config with ``version_policy: specific [N]``, sent as the
  load request's ``config`` override; nothing in the repository is edited, and Triton keeps the override in
  memory only. The launcher keeps it across the restarts of a crashed Triton (serving/runtime/pins.py: it serves
  the versions it served before the crash again); a new start (``make serve`` again, a pod scaled from zero) serves
  what the repository says. A rollback that must outlast that is a repository whose newest version is the one
  wanted (on S3, a release prefix; deploy/kserve/README.md).

- Two switches at once (two operators, or one and the launcher pinning again after a restart): the last load wins,
  as nothing locks a model across machines. After its load a switch reads back what Triton serves (the loaded
  config's policy, the ready versions); when that is not what it asked for, it says so and exits 1
  (:class:`ChangedMeanwhile`) instead of reporting what it read as its own result.

The repository API is an admin API: when the server restricts it (issue #7,
``--http-restricted-api=model-repository,...:admin-key=<secret>``), the secret is
sent as header ``admin-key`` from env TRITON_ADMIN_KEY.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Sequence

from common.ports import default_address
from serving.runtime import pins
from serving.runtime.security import ADMIN_HEADER, ADMIN_KEY_ENV


class RolloutError(RuntimeError):
    pass


class ChangedMeanwhile(RolloutError):
    """Triton serves something else than this switch asked for: another load (a second operator's rollout or
    rollback, the launcher pinning again after a restart) came between this one and its read-back."""


def pinned_versions(config: dict) -> list[int] | None:
    """The versions a loaded config's ``version_policy`` pins (``specific``), ascending; None when it serves the
    repository's newest (``latest``, Triton's default)."""
    specific = config.get("version_policy", {}).get("specific")
    return None if specific is None else sorted(int(v) for v in specific.get("versions", ()))


def compare(asked: list[int] | None, config: dict, ready: Sequence[int]) -> str:
    """What Triton serves, read back after a switch's load (the loaded ``config`` and the ``ready`` versions), next
    to what the switch asked for (``asked``: the versions pinned, None: the newest): "same", "loading" (the same
    policy, the asked versions not ready yet), or "other" (another load replaced this one: the last one wins)."""
    if pinned_versions(config) != asked:
        return "other"
    if asked is None:
        return "same" if ready else "loading"
    return "same" if set(asked) <= set(ready) else "loading"


def admin_headers() -> dict[str, str]:
    key = os.environ.get(ADMIN_KEY_ENV)
    return {ADMIN_HEADER: key} if key else {}


def ready_versions(client, model: str, headers: dict[str, str] | None = None) -> list[int]:
    """Versions of ``model`` that are READY now, from the repository index (``headers``: as :func:`switch`)."""
    index = client.get_model_repository_index(headers=admin_headers() if headers is None else headers)
    return list(pins.ready_versions(index).get(model, ()))


def switch(
    url: str,
    model: str,
    version: int | Sequence[int] | None = None,
    *,
    timeout: float = 300,
    headers: dict[str, str] | None = None,
    known_config: dict | None = None,
) -> list[int]:
    """Makes ``model`` serve ``version`` (None: the newest in the repository); returns the ready versions after.
    Raises :class:`ChangedMeanwhile` when the read-back after the load finds another load's result (a second
    switch at the same time), RolloutError for the other failures.

    Args:
        url: Triton's HTTP endpoint, ``host:port``.
        model: The model to switch (``age``, ``gender``...).
        version: The version to pin (or versions: the launcher pins every version a model served, pins.py), or None
            for the newest.
        timeout: Seconds the load may take (a model loads beside the serving one first).
        headers: What each call carries; None: the admin key from env TRITON_ADMIN_KEY (the launcher, which pins
            again after a restart, passes its own key: serving/runtime/pins.py).
        known_config: The config ``model`` was last served with, for when Triton has none to give (the model
            failed to load: a restarted Triton that loaded a broken newest version, pins.py).
    """
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    if headers is None:
        headers = admin_headers()
    client = httpclient.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
    try:
        try:
            # The CNNs are internal models: the door shows their config to admins only (docs/security.md).
            config = client.get_model_config(model, headers=headers)
        except InferenceServerException as err:
            if known_config is None:
                hint = "" if headers else f" (an internal model's config needs the admin key: set {ADMIN_KEY_ENV})"
                raise RolloutError(f"cannot read the config of {model!r} at {url}{hint}: {err}") from None
            config = copy.deepcopy(known_config)
        override = versions = None
        if version is not None:
            versions = [int(version)] if isinstance(version, int) else sorted(map(int, version))
            config["version_policy"] = {"specific": {"versions": versions}}
            override = json.dumps(config)
        try:
            client.load_model(model, headers=headers, config=override)
        except InferenceServerException as err:
            hint = ""
            if "explicit" in str(err) or "polling" in str(err):
                hint = " (start Triton with --model-control-mode explicit)"
            elif "restricted" in str(err) or "admin" in str(err).lower():
                hint = f" (the repository API is restricted: set {ADMIN_KEY_ENV})"
            elif "load failed" in str(err):
                hint = " (what served before serves on)"
            raise RolloutError(f"Triton refused to load {model!r}: {err}{hint}") from None
        if (
            version is None
            and pinned_versions(config) is not None
            and pinned_versions(client.get_model_config(model, headers=headers)) is not None
        ):
            # Still pinned: Triton 2.51 keeps a rollback's config override through a load without one when the
            # model's files have not changed (a rollout straight after a rollback served the pinned version on, red-
            # team probe 2026-12-07). The loaded config with the repository's own policy, the newest version
            # (every served config says so: tests/test_configs.py), is what the repository serves. Only a pin there
            # before this load: one made after it is another operator's rollback, which the read-back reports.
            config["version_policy"] = {"latest": {"num_versions": 1}}
            try:
                client.load_model(model, headers=headers, config=json.dumps(config))
            except InferenceServerException as err:
                raise RolloutError(f"Triton refused to load {model!r} unpinned: {err}") from None
        # Read back what serves now. Nothing locks the model between two operators (or an operator and the launcher
        # pinning again after a restart): the last load wins, and this command says what it finds, not what it asked
        # for (two rollouts at once printed "now serving [21]" while 22 served, red-team finding 9).
        deadline = time.monotonic() + timeout
        while True:
            try:
                loaded = client.get_model_config(model, headers=headers)
                ready = ready_versions(client, model, headers)
            except InferenceServerException as err:
                raise RolloutError(f"{model!r} was loaded, but what it serves cannot be read back: {err}") from None
            found = compare(versions, loaded, ready)
            if found == "same":
                return ready
            if found == "other":
                now = pinned_versions(loaded)
                raise ChangedMeanwhile(
                    f"another change happened meanwhile: {model!r} now serves version(s) {ready} "
                    f"({'the newest' if now is None else f'pinned to {now}'}, by another rollout or rollback), not "
                    f"{'the newest version' if versions is None else f'version(s) {versions}'} as this command "
                    "asked. The last load wins: check with --status before switching again"
                )
            if time.monotonic() > deadline:
                named = ", ".join(map(str, versions)) if versions else "latest"
                raise RolloutError(f"{model!r} version {named} is not ready after {timeout:.0f} s")
            time.sleep(0.2)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--url", default=os.environ.get("TRITON_HTTP_URL", default_address("http")), help="Triton HTTP host:port"
    )
    p.add_argument("--model", required=True)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--version", type=int, help="version to serve (rollback); default: the newest")
    group.add_argument("--status", action="store_true", help="print the ready versions and change nothing")
    p.add_argument("--timeout", type=float, default=300)
    args = p.parse_args(argv)
    # host:port, as Triton's HTTP client takes it: an http:// in front (as a browser's address) is dropped.
    args.url = args.url.removeprefix("http://").rstrip("/")
    if "://" in args.url or "/" in args.url:
        p.error(f"--url {args.url!r}: give Triton's HTTP endpoint as host:port (no https://, no path)")
    if args.version is not None and not 0 <= args.version < 2**63:  # Triton's versions are int64
        p.error(f"--version {args.version}: a version is a number from 0 to 2**63 - 1")
    try:
        if args.status:
            import tritonclient.http as httpclient
            from tritonclient.utils import InferenceServerException

            client = httpclient.InferenceServerClient(args.url)
            try:
                print(f"{args.model}: ready versions {ready_versions(client, args.model)}")
            except InferenceServerException as err:  # no key, a wrong one, a server restarting: one line
                hint = "" if admin_headers() else f" (the repository index needs the admin key: set {ADMIN_KEY_ENV})"
                print(f"error: cannot read the repository index at {args.url}{hint}: {err}", file=sys.stderr)
                return 1
            finally:
                client.close()
            return 0
        ready = switch(args.url, args.model, args.version, timeout=args.timeout)
    except RolloutError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # refused, reset, unreachable, timed out: no Triton (or not this one) at --url
        print(
            f"error: no Triton answering HTTP at {args.url} ({err}); is it running? (--url / TRITON_HTTP_URL)",
            file=sys.stderr,
        )
        return 1
    except Exception as err:  # noqa: BLE001 - e.g. the HTTP client's parse error where --url is Triton's gRPC port
        print(
            f"error: no Triton HTTP answer at {args.url} ({type(err).__name__}: {err}); is that Triton's HTTP port? "
            "(--url / TRITON_HTTP_URL)",
            file=sys.stderr,
        )
        return 1
    print(f"{args.model}: now serving version(s) {ready}")
    if args.version is not None:
        print(
            "note: pinned while this server runs (the launcher pins it again after a crash); a new start serves "
            "the repository's newest again",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
