"""The limit: GET every named object to a file, N at a time, with no check of any kind.

    python bench/raw_get.py ENDPOINT BUCKET KEY_PREFIX DEST CONCURRENCY [sha1] < names

Run as its own process, like the contestants, so that all pay the same interpreter start-up.
Not even the SDK's own check: by default it validates the CRC32 that the S3 server stores with an
object on every whole-object GET, at about 0.5 GB/s here, which made this "limit" 18 % slower on
the large-file mix than a download with no check (8 paired rounds).
Credentials come from the environment (AWS_ACCESS_KEY_ID...).

With ``sha1``, the same download also hashes each file's bytes as they stream, and prints
"name sha1" lines for the harness to compare with the bucket's: the least that any download
checked by sha1 pays on the same core, so that crds-job's time beyond it is not the check's.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys

import aiobotocore.session
from aiobotocore.config import AioConfig


async def download(endpoint: str, bucket: str, prefix: str, dest: str, concurrency: int, names: list[str],
                   sha1: bool = False) -> dict[str, str]:
    """Download ``names``; return their sha1s if asked (else nothing)."""
    config = AioConfig(max_pool_connections=concurrency, retries={"mode": "standard", "max_attempts": 3},
                       response_checksum_validation="when_required")
    session = aiobotocore.session.AioSession()
    async with session.create_client("s3", endpoint_url=endpoint, config=config) as client:
        gate = asyncio.Semaphore(concurrency)
        digests: dict[str, str] = {}

        async def one(name: str) -> None:
            area = "mappings" if name.endswith("map") else "references"
            folder = os.path.join(dest, area, "roman")
            os.makedirs(folder, exist_ok=True)
            async with gate:
                response = await client.get_object(Bucket=bucket, Key=f"{prefix}/{area}/roman/{name}")
                digest = hashlib.sha1() if sha1 else None
                with open(os.path.join(folder, name), "wb") as out:
                    async for chunk in response["Body"].iter_chunks(1 << 20):
                        if digest is not None:
                            digest.update(chunk)
                        out.write(chunk)
                if digest is not None:
                    digests[name] = digest.hexdigest()

        await asyncio.gather(*(one(name) for name in names))
    return digests


if __name__ == "__main__":
    endpoint, bucket, prefix, dest, concurrency = sys.argv[1:6]
    found = asyncio.run(download(endpoint, bucket, prefix, dest, int(concurrency), sys.stdin.read().split(),
                                 sha1=sys.argv[6:] == ["sha1"]))
    print("".join(f"{name} {digest}\n" for name, digest in found.items()), end="")
