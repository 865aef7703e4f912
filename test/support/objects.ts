// What a test checks in a bucket after an upload: the bytes, the keys, the multipart uploads left open.
import type { O3Client } from '../../lib/o3/index.js'

/** The whole object; an empty one without a GET (a range request on it is refused). */
export async function readAll(client: O3Client, key: string): Promise<Buffer> {
  if ((await client.head(key)).size === 0) return Buffer.alloc(0)
  const chunks: Buffer[] = []
  for await (const c of client.getRange(key)) chunks.push(c as Buffer)
  return Buffer.concat(chunks)
}

/** Every object key below the client's prefix, sorted. */
export async function keys(client: O3Client): Promise<string[]> {
  const out: string[] = []
  for await (const o of client.list('')) if (o.type === 'object') out.push(o.key)
  return out.sort()
}

/** Keys of the multipart uploads still open below the client's prefix. */
export async function uploads(client: O3Client): Promise<string[]> {
  const out: string[] = []
  for await (const u of client.listMultipartUploads('')) out.push(u.key)
  return out
}
