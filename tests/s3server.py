"""A real S3-compatible server for tests: moto's server mode on 127.0.0.1, started and stopped
by the test session. LanceDB (and anything else that honours the AWS_* variables) reaches it
through the environment, so the code under test takes no test-only arguments."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Iterator

from localproc import free_port, stop

ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP")


@contextlib.contextmanager
def s3_server(bucket: str = "mindsearch-test", timeout: float = 30.0) -> Iterator[dict]:
    """Start moto on a free loopback port, create ``bucket``, yield the AWS_* environment."""
    import boto3

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.1)
        env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT": endpoint, "AWS_ENDPOINT_URL": endpoint,
               "AWS_ALLOW_HTTP": "true"}
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                     region_name="us-east-1").create_bucket(Bucket=bucket)
        yield {**env, "bucket": bucket}
    finally:
        stop(proc, timeout=10)


@contextlib.contextmanager
def aws_environment(env: dict) -> Iterator[None]:
    """Point this process (and its children) at the test server; restore afterwards."""
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    os.environ.update({k: env[k] for k in ENV_KEYS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
