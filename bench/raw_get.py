"""The limit: GET every named object to a file, N at a time, with no check of any kind.

    python bench/raw_get.py ENDPOINT BUCKET KEY_PREFIX DEST CONCURRENCY < names

Run as its own process, like the contestants, so that all pay the same interpreter start-up.
Not even the SDK's own check: by default it validates the CRC32 that the S3 server stores with an
object on every whole-object GET, at about 0.5 GB/s here, which made this "limit" 18 % slower on
the large-file mix than a download with no check (8 paired rounds).
Credentials come from the environment (AWS_ACCESS_KEY_ID...).
"""

from __future__ import annotations

import asyncio
import os
import sys

import aiobotocore.session
from aiobotocore.config import AioConfig


async def download(endpoint: str, bucket: str, prefix: str, dest: str, concurrency: int, names: list[str]) -> None:
    config = AioConfig(max_pool_connections=concurrency, retries={"mode": "standard", "max_attempts": 3},
                       response_checksum_validation="when_required")
    session = aiobotocore.session.AioSession()
    async with session.create_client("s3", endpoint_url=endpoint, config=config) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(name: str) -> None:
            area = "mappings" if name.endswith("map") else "references"
            folder = os.path.join(dest, area, "roman")
            os.makedirs(folder, exist_ok=True)
            async with gate:
                response = await client.get_object(Bucket=bucket, Key=f"{prefix}/{area}/roman/{name}")
                with open(os.path.join(folder, name), "wb") as out:
                    async for chunk in response["Body"].iter_chunks(1 << 20):
                        out.write(chunk)

        await asyncio.gather(*(one(name) for name in names))


if __name__ == "__main__":
    endpoint, bucket, prefix, dest, concurrency = sys.argv[1:6]
    asyncio.run(download(endpoint, bucket, prefix, dest, int(concurrency), sys.stdin.read().split()))
