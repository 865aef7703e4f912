import { randomBytes } from 'node:crypto'
import type { O3Client } from '../../lib/o3/client.js'
import { serverClient, serverEnv } from '../../test/support/s3-server.js'
import type { BenchContext } from './types.js'

export const MiB = 1 << 20
export const GiB = 1 << 30

/** An O3 client on the bench's server, with the credentials passed in-process rather than via env. */
export function benchClient(ctx: BenchContext, location: string, maxSockets = 16): O3Client {
  return serverClient(ctx.server, location, { maxSockets })
}

/** The environment a child process (a mount, a peer) needs to reach the bench's server. */
export function benchEnv(ctx: BenchContext): NodeJS.ProcessEnv {
  return { ...process.env, ...serverEnv(ctx.server) }
}

/** Uploads `size` random bytes as one object, in 16 MiB parts, 4 at a time. */
export async function uploadRandomObject(client: O3Client, key: string, size: number): Promise<void> {
  const partSize = 16 * MiB
  const uploadId = await client.createMultipartUpload(key)
  const parts = Array.from({ length: Math.ceil(size / partSize) }, (_, i) => i + 1)
  const done = []
  for (let i = 0; i < parts.length; i += 4) {
    done.push(
      ...(await Promise.all(parts.slice(i, i + 4).map((n) => client.uploadPart(key, uploadId, n, randomBytes(Math.min(partSize, size - (n - 1) * partSize)))))),
    )
  }
  await client.completeMultipartUpload(key, uploadId, done)
}

export const mbps = (bytes: number, seconds: number): number => bytes / 1e6 / seconds

export function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
}

/** Runs `fn` over `items` with at most `limit` in flight. */
export async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length)
  let next = 0
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++
        out[i] = await fn(items[i]!)
      }
    }),
  )
  return out
}
