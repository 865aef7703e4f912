#!/usr/bin/env node
/**
 * Uploads a local directory tree to `o3://bucket/prefix`, each file with a `<file>.cid` sidecar
 * (the CID alone on the first line, as for checkpoints, then JSON with sha256 and size), so that
 * anyone can check the data a model was trained on with stock IPFS tools.
 * Usage: node dist/scripts/upload-dataset.js <dir> <o3://bucket/prefix> [--create-bucket]
 */
import { createReadStream } from 'node:fs'
import { readdir, stat } from 'node:fs/promises'
import { join, relative } from 'node:path'
import { ContentHasher } from '../lib/content/cid.js'
import { O3Client, O3Error } from '../lib/o3/index.js'
import { MultipartSink } from '../lib/o3/multipart.js'

const PART = 16 << 20

async function* files(dir: string): AsyncGenerator<string> {
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) yield* files(p)
    else if (e.isFile()) yield p
  }
}

/** Streams one file into O3 (multipart when large) while hashing it; returns its digest. */
async function uploadFile(client: O3Client, path: string, key: string) {
  const size = (await stat(path)).size
  const hasher = new ContentHasher()
  if (size <= PART) {
    const chunks: Buffer[] = []
    for await (const c of createReadStream(path)) chunks.push(c as Buffer)
    const body = Buffer.concat(chunks)
    await hasher.update(body)
    await client.put(key, body)
  } else {
    const sink = await MultipartSink.open(client, key, { partSize: PART, parallel: 4, tap: (part) => hasher.update(part) })
    try {
      for await (const c of createReadStream(path, { highWaterMark: 4 << 20 })) await sink.write(c as Buffer)
      await sink.finish()
    } catch (err) {
      await sink.abort(err).catch(() => {})
      throw err
    }
  }
  return hasher.digest()
}

async function main(): Promise<void> {
  const [dir, location, flag] = process.argv.slice(2)
  if (!dir || !location?.startsWith('o3://')) throw new Error('usage: upload-dataset <dir> <o3://bucket/prefix> [--create-bucket]')
  const client = O3Client.open(location.slice('o3://'.length))
  try {
    if (flag === '--create-bucket') await client.createBucket()
    else await client.checkBucket()
    for await (const path of files(dir)) {
      const key = relative(dir, path)
      const d = await uploadFile(client, path, key)
      const sidecar = `${d.cid}\n${JSON.stringify({ cid: d.cid, sha256: d.sha256, size: d.size, time: new Date().toISOString() })}\n`
      await client.put(`${key}.cid`, sidecar, { contentType: 'text/plain; charset=utf-8' })
      console.log(`${location}/${key}  ${d.size} bytes  ${d.cid}`)
    }
  } finally {
    client.close()
  }
}

main().catch((err: unknown) => {
  console.error(`upload-dataset: ${(err instanceof Error ? err.message : String(err)).split('\n')[0]}`)
  process.exit(err instanceof O3Error ? err.exitCode : 1)
})
