"""A real, local S3 server (moto in server mode) with authentication on, for tests and measurements.

    with LocalS3() as s3:                  # 127.0.0.1, a free port
        os.environ.update(s3.credentials)  # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION
        uri = s3.uri("models")             # s3://127.0.0.1:PORT/BUCKET/models

moto accepts any key unless INITIAL_NO_AUTH_ACTION_COUNT is set; with it, the first
few calls (creating an IAM user with an allow-all policy and its access key) run
unauthenticated and every later call needs that key, so a wrong key is refused as
it would be by AWS or MinIO.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

from serving.runtime.launch import free_port
from serving.runtime.subproc import stop_process

REGION = "us-east-1"
# werkzeug's access log line: 127.0.0.1 - - [date] "GET /bucket/key?query HTTP/1.1" 200 -
_ACCESS = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" \d{3}')
# create_user, put_user_policy, create_access_key run before authentication starts.
_SETUP_CALLS = 3


class LocalS3:
    def __init__(self, bucket: str = "models", *, start_timeout: float = 30):
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.credentials: dict[str, str] = {}
        self._timeout = start_timeout
        self._proc: subprocess.Popen | None = None
        self._log = None

    def uri(self, prefix: str = "") -> str:
        return f"s3://127.0.0.1:{self.port}/{self.bucket}/{prefix}".rstrip("/")

    def client(self, service: str = "s3", **credentials):
        import boto3

        creds = credentials or {
            "aws_access_key_id": self.credentials["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": self.credentials["AWS_SECRET_ACCESS_KEY"],
        }
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION, **creds)

    def requests(self) -> list[tuple[str, str]]:
        """(method, path with query) of every HTTP request served so far, from the server's access log:
        what a client (Triton at a cold start, the publisher) really read or wrote."""
        if self._log is None:
            return []
        self._log.flush()
        self._log.seek(0)
        return [(m[1], m[2]) for line in self._log.read().splitlines() if (m := _ACCESS.search(line))]

    def start(self) -> LocalS3:
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_CALLS)}
        # The access log (werkzeug writes one line per request to stderr) goes to a file that requests() reads.
        self._log = tempfile.TemporaryFile("w+")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not start on port {self.port}") from None
                time.sleep(0.1)
        iam = self.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="publisher")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="publisher", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="publisher")["AccessKey"]
        self.credentials = {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_DEFAULT_REGION": REGION,
        }
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, timeout=10)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
