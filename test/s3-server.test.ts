// The test S3 server itself: does Swift + s3api speak the S3 the rest of the suite relies on,
// and does stopping it leave nothing behind.
import t from 'tap'
import { spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetBucketVersioningCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectVersionsCommand,
  ListObjectsV2Command,
  ListPartsCommand,
  PutObjectCommand,
  UploadPartCommand,
  type S3Client,
} from '@aws-sdk/client-s3'
import { createBucket, enableVersioning, s3Client, startS3Server, stopS3Server, useS3Server } from './support/s3-server.js'

const MiB = 1024 * 1024
const md5 = (b: Uint8Array): string => createHash('md5').update(b).digest('hex')

async function getBytes(client: S3Client, Bucket: string, Key: string, Range?: string): Promise<Buffer> {
  const res = await client.send(new GetObjectCommand({ Bucket, Key, Range }))
  return Buffer.from(await res.Body!.transformToByteArray())
}

function readPids(dir: string): number[] {
  return readFileSync(`${dir}/pids`, 'utf8').split('\n').filter(Boolean).map(Number)
}

async function waitGone(pids: number[], ms: number): Promise<number[]> {
  const deadline = Date.now() + ms
  let alive = pids
  while ((alive = pids.filter((p) => existsSync(`/proc/${p}`))).length && Date.now() < deadline) await sleep(100)
  return alive
}

t.test('speaks S3 through the AWS SDK', async (t) => {
  const info = await useS3Server(t)
  t.equal(info.region, 'akave-network')
  const client = s3Client(info)
  t.teardown(() => client.destroy())
  const Bucket = `s3srv-${process.pid}-${Date.now()}`
  await createBucket(info, Bucket)

  const body = randomBytes(1000)
  const put = await client.send(new PutObjectCommand({ Bucket, Key: 'a/b/c.bin', Body: body }))
  t.equal(put.ETag, `"${md5(body)}"`, 'single-part ETag is the MD5')
  const head = await client.send(new HeadObjectCommand({ Bucket, Key: 'a/b/c.bin' }))
  t.equal(head.ContentLength, 1000)

  t.same(await getBytes(client, Bucket, 'a/b/c.bin'), body, 'whole object')
  t.same(await getBytes(client, Bucket, 'a/b/c.bin', 'bytes=0-0'), body.subarray(0, 1), 'bytes=0-0')
  t.same(await getBytes(client, Bucket, 'a/b/c.bin', 'bytes=-5'), body.subarray(995), 'suffix range')
  t.same(await getBytes(client, Bucket, 'a/b/c.bin', 'bytes=999-'), body.subarray(999), 'last byte')
  t.same(await getBytes(client, Bucket, 'a/b/c.bin', 'bytes=990-5000'), body.subarray(990), 'range past EOF is clipped')
  await t.rejects(getBytes(client, Bucket, 'a/b/c.bin', 'bytes=1000-'), { name: 'InvalidRange' }, 'range wholly past EOF')
  await t.rejects(getBytes(client, Bucket, 'nope'), { name: 'NoSuchKey' })

  for (const Key of ['a/x.txt', 'a/b/d.txt', 'a/e/f.txt', 'top.txt']) {
    await client.send(new PutObjectCommand({ Bucket, Key, Body: Key }))
  }
  const root = await client.send(new ListObjectsV2Command({ Bucket, Delimiter: '/' }))
  t.same(
    root.CommonPrefixes?.map((p) => p.Prefix),
    ['a/'],
  )
  t.same(
    root.Contents?.map((o) => o.Key),
    ['top.txt'],
  )
  const underA = await client.send(new ListObjectsV2Command({ Bucket, Delimiter: '/', Prefix: 'a/' }))
  t.same(
    underA.CommonPrefixes?.map((p) => p.Prefix),
    ['a/b/', 'a/e/'],
    'nested prefixes',
  )
  t.same(
    underA.Contents?.map((o) => o.Key),
    ['a/x.txt'],
  )
  const page = await client.send(new ListObjectsV2Command({ Bucket, MaxKeys: 2 }))
  t.equal(page.IsTruncated, true)
  const rest = await client.send(new ListObjectsV2Command({ Bucket, MaxKeys: 10, ContinuationToken: page.NextContinuationToken }))
  t.same(
    [...page.Contents!, ...rest.Contents!].map((o) => o.Key),
    ['a/b/c.bin', 'a/b/d.txt', 'a/e/f.txt', 'a/x.txt', 'top.txt'],
  )

  // Multipart: parts other than the last must be >= 5 MiB, as on S3
  const parts = [randomBytes(5 * MiB), randomBytes(5 * MiB), randomBytes(123)]
  const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket, Key: 'big.bin' }))
  const etags: string[] = []
  for (const [i, Body] of parts.entries()) {
    const r = await client.send(new UploadPartCommand({ Bucket, Key: 'big.bin', UploadId, PartNumber: i + 1, Body }))
    etags.push(r.ETag!)
  }
  const listed = await client.send(new ListPartsCommand({ Bucket, Key: 'big.bin', UploadId }))
  t.same(
    listed.Parts?.map((p) => p.Size),
    parts.map((p) => p.length),
  )
  const done = await client.send(
    new CompleteMultipartUploadCommand({
      Bucket,
      Key: 'big.bin',
      UploadId,
      MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
    }),
  )
  const concat = Buffer.concat(parts)
  const expectedEtag = md5(Buffer.concat(etags.map((e) => Buffer.from(e.replace(/"/g, ''), 'hex'))))
  t.equal(done.ETag, `"${expectedEtag}-3"`, 'S3-style multipart ETag')
  t.equal(md5(await getBytes(client, Bucket, 'big.bin')), md5(concat), 'multipart content')
  t.same(
    await getBytes(client, Bucket, 'big.bin', `bytes=${5 * MiB - 2}-${5 * MiB + 1}`),
    concat.subarray(5 * MiB - 2, 5 * MiB + 2),
    'range across a part boundary',
  )

  const aborted = await client.send(new CreateMultipartUploadCommand({ Bucket, Key: 'gone.bin' }))
  await client.send(new UploadPartCommand({ Bucket, Key: 'gone.bin', UploadId: aborted.UploadId, PartNumber: 1, Body: parts[0] }))
  await client.send(new AbortMultipartUploadCommand({ Bucket, Key: 'gone.bin', UploadId: aborted.UploadId }))
  const uploads = await client.send(new ListMultipartUploadsCommand({ Bucket }))
  t.same(uploads.Uploads ?? [], [], 'no uploads left after abort')
  await t.rejects(client.send(new ListPartsCommand({ Bucket, Key: 'gone.bin', UploadId: aborted.UploadId })), { name: 'NoSuchUpload' })
  await t.rejects(client.send(new HeadObjectCommand({ Bucket, Key: 'gone.bin' })), { name: 'NotFound' })
})

t.test('PutBucketVersioning keeps every version; a bucket never put under it behaves as before', async (t) => {
  const info = await useS3Server(t)
  const client = s3Client(info)
  t.teardown(() => client.destroy())
  const Bucket = `s3srv-ver-${process.pid}-${Date.now()}`
  const Plain = `s3srv-plain-${process.pid}-${Date.now()}`
  await createBucket(info, Bucket)
  await createBucket(info, Plain)
  t.equal((await client.send(new GetBucketVersioningCommand({ Bucket }))).Status, undefined, 'a new bucket is unversioned')
  await enableVersioning(info, Bucket)
  t.equal((await client.send(new GetBucketVersioningCommand({ Bucket }))).Status, 'Enabled')
  t.equal((await client.send(new GetBucketVersioningCommand({ Bucket: Plain }))).Status, undefined, 'the other bucket is not')

  const one = randomBytes(1000)
  const two = randomBytes(700)
  const v1 = await client.send(new PutObjectCommand({ Bucket, Key: 'k/obj', Body: one }))
  const v2 = await client.send(new PutObjectCommand({ Bucket, Key: 'k/obj', Body: two }))
  t.ok(v1.VersionId && v2.VersionId && v1.VersionId !== v2.VersionId, `each PUT names its version (x-amz-version-id ${v1.VersionId}, ${v2.VersionId})`)
  t.same(await getBytes(client, Bucket, 'k/obj'), two, 'a plain GET reads the newest')
  const old = await client.send(new GetObjectCommand({ Bucket, Key: 'k/obj', VersionId: v1.VersionId }))
  t.same(Buffer.from(await old.Body!.transformToByteArray()), one, 'GET with VersionId reads the older one')
  t.equal(old.VersionId, v1.VersionId)
  t.equal(old.ETag, `"${md5(one)}"`)
  const ranged = await client.send(new GetObjectCommand({ Bucket, Key: 'k/obj', VersionId: v1.VersionId, Range: 'bytes=10-19' }))
  t.same(Buffer.from(await ranged.Body!.transformToByteArray()), one.subarray(10, 20), 'a ranged GET of an older version')
  const head = await client.send(new HeadObjectCommand({ Bucket, Key: 'k/obj', VersionId: v1.VersionId }))
  t.same([head.ContentLength, head.VersionId], [1000, v1.VersionId], 'HEAD with VersionId')

  const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket, Key: 'k/big' }))
  const part = await client.send(new UploadPartCommand({ Bucket, Key: 'k/big', UploadId, PartNumber: 1, Body: one }))
  await client.send(new CompleteMultipartUploadCommand({ Bucket, Key: 'k/big', UploadId, MultipartUpload: { Parts: [{ ETag: part.ETag, PartNumber: 1 }] } }))
  const bigHead = await client.send(new HeadObjectCommand({ Bucket, Key: 'k/big' }))
  t.ok(bigHead.VersionId, 'a completed multipart upload is a version too (HEAD names it; the completion itself does not here)')

  const marker = await client.send(new DeleteObjectCommand({ Bucket, Key: 'k/obj' }))
  t.equal(marker.DeleteMarker, true, 'a plain DELETE only adds a delete marker')
  await t.rejects(getBytes(client, Bucket, 'k/obj'), { name: 'NoSuchKey' })
  const listed = await client.send(new ListObjectVersionsCommand({ Bucket, Prefix: 'k/' }))
  t.same(
    listed.Versions?.map((v) => [v.Key, v.VersionId, v.IsLatest, v.Size]),
    [
      ['k/big', bigHead.VersionId, true, 1000],
      ['k/obj', v2.VersionId, false, 700],
      ['k/obj', v1.VersionId, false, 1000],
    ],
    'ListObjectVersions names every version, newest first',
  )
  t.same(
    listed.DeleteMarkers?.map((m) => [m.Key, m.VersionId, m.IsLatest]),
    [['k/obj', marker.VersionId, true]],
  )
  const again = await client.send(new GetObjectCommand({ Bucket, Key: 'k/obj', VersionId: v2.VersionId }))
  t.same(Buffer.from(await again.Body!.transformToByteArray()), two, 'the data outlives its delete marker')
  for (const v of [...listed.Versions!, ...listed.DeleteMarkers!]) await client.send(new DeleteObjectCommand({ Bucket, Key: v.Key, VersionId: v.VersionId }))
  const after = await client.send(new ListObjectVersionsCommand({ Bucket, Prefix: 'k/' }))
  t.same([after.Versions ?? [], after.DeleteMarkers ?? []], [[], []], 'DELETE with VersionId removes each for good')

  const plain = await client.send(new PutObjectCommand({ Bucket: Plain, Key: 'p', Body: one }))
  t.equal(plain.VersionId, undefined, 'an unversioned bucket names no version')
  await client.send(new PutObjectCommand({ Bucket: Plain, Key: 'p', Body: two }))
  t.same(await getBytes(client, Plain, 'p'), two)
  await client.send(new DeleteObjectCommand({ Bucket: Plain, Key: 'p' }))
  await t.rejects(client.send(new HeadObjectCommand({ Bucket: Plain, Key: 'p' })), { name: 'NotFound' }, 'and a DELETE there removes the object')
})

t.test('stop leaves no process and no directory, and is idempotent', async (t) => {
  const server = await startS3Server()
  const pids = readPids(server.dir)
  t.equal(pids.length, 6, 'memcached, 4 Swift servers, watchdog')
  // a second instance runs beside the shared one and answers on its own port
  const res = await fetch(`${server.endpoint}/healthcheck`)
  t.equal(res.status, 200)
  await server.stop()
  t.same(await waitGone(pids, 0), [], 'every recorded PID is gone')
  t.notOk(existsSync(server.dir), 'directory removed')
  await t.resolves(stopS3Server(server.dir), 'a second stop is a no-op')
})

t.test('the watchdog stops the server when the watched process dies', async (t) => {
  const watched = spawn('sleep', ['600'], { stdio: 'ignore' })
  t.teardown(() => watched.kill('SIGKILL'))
  const server = await startS3Server({ watchPid: watched.pid!, stopOnExit: false })
  t.teardown(() => server.stop())
  const pids = readPids(server.dir)
  watched.kill('SIGKILL')
  // The script stops it within about a second; two minutes is a deadline for a loaded machine.
  t.same(await waitGone(pids, 120_000), [], 'every recorded PID is gone')
  t.notOk(existsSync(server.dir), 'directory removed')
})
