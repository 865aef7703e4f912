// An open file's version pin in the client, against the real server: ETags compare equal however
// they are spelled, a response of another version is refused even when the server ignores
// If-Match, and a pinned version id is sent rather than silently dropped.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import type { S3Client } from '@aws-sdk/client-s3'
import { O3IntegrityError, normalizeEtag, type O3Client, type ObjectPin } from '../lib/o3/index.js'
import { createBucket, serverClient, useS3Server } from './support/s3-server.js'

const BUCKET = `mount-pin-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)

function open(): O3Client {
  const c = serverClient(info, BUCKET)
  t.teardown(() => c.close())
  return c
}

async function read(c: O3Client, key: string, pin?: ObjectPin): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const b of c.iterateRange(key, { start: 0, pin })) chunks.push(b)
  return Buffer.concat(chunks)
}

t.test('an ETag pins the object however it is spelled: quoted, bare or weak', async (t) => {
  const c = open()
  const body = randomBytes(64 * 1024)
  const { etag } = await c.put('spelled.bin', body)
  const bare = normalizeEtag(etag)
  t.not(bare, etag, 'the server quotes its ETags')
  for (const spelling of [etag, bare, `W/"${bare}"`, `w/${bare}`]) t.ok((await read(c, 'spelled.bin', { etag: spelling })).equals(body), spelling)
})

t.test('a response of another version is refused even when the server ignores If-Match', async (t) => {
  const c = open()
  // Strip If-Match after the SDK has built the request and before it is signed: the real server
  // then answers as one that does not honour conditional requests (O3 documents none).
  let stripped = 0
  ;(c['s3'] as S3Client).middlewareStack.add(
    (next) => async (args) => {
      const headers = (args.request as { headers: Record<string, string> }).headers
      if (headers['if-match'] !== undefined) {
        delete headers['if-match']
        stripped++
      }
      return next(args)
    },
    { step: 'build', name: 'stripIfMatch' },
  )
  const v1 = randomBytes(256 * 1024)
  const v2 = randomBytes(256 * 1024)
  const { etag } = await c.put('replaced.bin', v1)
  const pin = { etag }
  t.ok((await read(c, 'replaced.bin', pin)).equals(v1), 'the pinned version reads while it is current')
  await c.put('replaced.bin', v2)
  t.ok((await read(c, 'replaced.bin')).equals(v2), 'unpinned, the server serves the new version')
  await t.rejects(read(c, 'replaced.bin', pin), O3IntegrityError, 'pinned, the new version is refused by its own ETag')
  t.ok(stripped >= 2, `If-Match never reached the server (${stripped} stripped)`)
})

t.test('a pinned version id is sent: a version the server does not have is not replaced by the current object', async (t) => {
  const c = open()
  const body = randomBytes(4096)
  const { etag } = await c.put('versioned.bin', body)
  // A bucket never put under versioning names no version id, and knows only the version "null".
  t.equal((await c.head('versioned.bin')).versionId, undefined, 'an unversioned bucket names no version')
  const learnt: ObjectPin = { etag }
  await read(c, 'versioned.bin', learnt)
  t.equal(learnt.versionId, undefined, 'no version id is recorded where the server names none')
  t.ok((await read(c, 'versioned.bin', { etag, versionId: 'null' })).equals(body), 'version "null" is the unversioned object')
  // Any other version id is one the server does not have: the read fails, at once, rather than serve the current object.
  const retries = c.stats.retries
  await t.rejects(
    read(c, 'versioned.bin', { etag, versionId: '1700000000.00000' }),
    { name: 'O3NotFoundError', message: /NoSuchVersion|NoSuchKey/ },
    'another version id reaches the server and fails the read',
  )
  t.equal(c.stats.retries, retries, 'not retried')
})
