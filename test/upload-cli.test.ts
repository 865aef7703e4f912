import { spawn, type ChildProcess } from 'node:child_process'
import { createHash, randomFillSync } from 'node:crypto'
import { appendFileSync, createReadStream, mkdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import t from 'tap'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { digestContent } from '../lib/content/cid.js'
import { DEFAULT_PART_SIZE } from '../lib/content/hashed-upload.js'
import { parseSidecar, sidecarKeyOf } from '../lib/content/sidecar.js'
import { DATASET_MANIFEST_NAME, parseDatasetManifest } from '../lib/content/dataset-manifest.js'
import { cliCommand } from '../lib/paths.js'
import { startFaultProxy } from './support/fault-proxy.js'
import { until } from './support/until.js'
import { createBucket, serverEnv, useS3Server } from './support/s3-server.js'
import { openClient, tempDir } from './fixtures/ckpt.js'
import { keys, readAll, uploads } from './support/objects.js'

const MiB = 1 << 20
const info = await useS3Server(t)
const bucket = `upload-cli-${process.pid}`
await createBucket(info, bucket)

interface Outcome {
  code: number | null
  stdout: string
  stderr: string
}

function o3upload(args: string[], env: Record<string, string> = serverEnv(info), started?: (child: ChildProcess) => void): Promise<Outcome> {
  const cli = cliCommand('upload/cli.ts')
  const child = spawn(process.execPath, [...cli.execArgv, cli.file, ...args], {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  started?.(child)
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()))
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()))
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })))
}

function writeRandom(file: string, size: number): void {
  mkdirSync(path.dirname(file), { recursive: true })
  writeFileSync(file, randomFillSync(Buffer.allocUnsafe(size)))
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')

t.test('uploads a tree, one file multipart, each with a sidecar the shared reader accepts, then its manifest', async (t) => {
  const dir = tempDir(t)
  const sizes: Record<string, number> = { 'a.txt': 11, 'sub/b.bin': 300 << 10, 'sub/deeper/empty': 0, 'big.bin': DEFAULT_PART_SIZE + 3 * MiB + 5 }
  for (const [key, size] of Object.entries(sizes)) writeRandom(path.join(dir, key), size)
  writeFileSync(path.join(dir, 'stale.cid'), 'a sidecar from elsewhere\n')
  writeFileSync(path.join(dir, DATASET_MANIFEST_NAME), 'a manifest from elsewhere\n')

  const r = await o3upload([dir, `o3://${bucket}/tree/`])
  t.equal(r.code, 0, r.stderr)
  const lines = r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { event: string; location: string; files?: number; bytes?: number; cid?: string })
  t.same(
    lines
      .filter((l) => l.event === 'file')
      .map((l) => l.location)
      .sort(),
    Object.keys(sizes)
      .map((k) => `o3://${bucket}/tree/${k}`)
      .sort(),
  )
  t.match(lines.at(-1), { event: 'summary', files: 4, bytes: Object.values(sizes).reduce((a, b) => a + b, 0) })
  t.match(r.stderr, /"event":"done"/, 'progress as JSON lines on stderr when not a terminal')

  const client = openClient(t, info, `${bucket}/tree`)
  t.same(
    await keys(client),
    [DATASET_MANIFEST_NAME, ...Object.keys(sizes).flatMap((k) => [k, sidecarKeyOf(k)])].sort(),
    'every file and its sidecar, the manifest, and no local .cid file or manifest',
  )
  const manifestBytes = await readAll(client, DATASET_MANIFEST_NAME)
  const manifest = await parseDatasetManifest(manifestBytes, DATASET_MANIFEST_NAME)
  t.same(Object.keys(manifest.files).sort(), Object.keys(sizes).sort(), 'the manifest covers every file')
  t.match(
    lines.find((l) => l.event === 'manifest'),
    { location: `o3://${bucket}/tree/${DATASET_MANIFEST_NAME}`, cid: (await digestContent(manifestBytes)).cid, files: 4 },
  )
  t.same(await uploads(client), [], 'no multipart upload left open')
  for (const key of Object.keys(sizes)) {
    const file = path.join(dir, key)
    const local = await digestContent(createReadStream(file) as AsyncIterable<Buffer>)
    t.equal(sha256(await readAll(client, key)), sha256(readFileSync(file)), `${key}: stored bytes`)
    const text = (await readAll(client, sidecarKeyOf(key))).toString('utf8')
    t.equal(text.split('\n')[0], local.cid, `${key}: the sidecar's first line is the CID`)
    const record = parseSidecar(text, key)
    t.same({ cid: record.cid, sha256: record.sha256, size: record.size }, local, `${key}: CID, sha256 and size of the local file`)
    t.ok(!Number.isNaN(Date.parse(record.time)), `${key}: a time`)
    const data = readFileSync(file)
    const leaves = []
    for (let off = 0; off < Math.max(1, data.length); off += MiB) leaves.push(sha256(data.subarray(off, off + MiB)))
    t.same(manifest.files[key], { ...local, leaves }, `${key}: the manifest's CID, sha256, size and 1 MiB leaf digests`)
  }
})

t.test('a missing bucket: exit 66 and one line; --create-bucket creates it', async (t) => {
  const dir = tempDir(t)
  writeRandom(path.join(dir, 'x.bin'), 1000)
  const missing = `upload-cli-new-${process.pid}`
  const r = await o3upload([dir, `o3://${missing}/p`])
  t.equal(r.code, ExitCode.notFound, r.stderr)
  t.equal(r.stderr.trim().split('\n').length, 1, 'one line')
  t.match(r.stderr, /^o3upload: .*--create-bucket/)
  const created = await o3upload([dir, `o3://${missing}/p`, '--create-bucket'])
  t.equal(created.code, 0, created.stderr)
  t.same(await keys(openClient(t, info, `${missing}/p`)), [DATASET_MANIFEST_NAME, 'x.bin', 'x.bin.cid'])
})

t.test('bad arguments are usage errors (64)', async (t) => {
  const dir = tempDir(t)
  const flag = await o3upload([dir, `o3://${bucket}/p`, '--no-such-flag'])
  t.equal(flag.code, ExitCode.usage, flag.stderr)
  t.match(flag.stderr, /unknown option '--no-such-flag'/)
  const notDir = await o3upload([path.join(dir, 'nothing-here'), `o3://${bucket}/p`])
  t.equal(notDir.code, ExitCode.usage, notDir.stderr)
  t.match(notDir.stderr, /^o3upload: .*nothing-here is not a directory.*\n$/)
  const notO3 = await o3upload([dir, `${bucket}/p`])
  t.equal(notO3.code, ExitCode.usage, notO3.stderr)
  t.match(notO3.stderr, /must look like o3:\/\/bucket\/prefix/)
})

t.test('a file that grows or shrinks after it is listed: exit 64, one line naming it, nothing of it stored, no manifest', async (t) => {
  const cases: [string, (file: string) => void, string][] = [
    // Past a part: listed at 4 KiB it goes as one PUT, which must not read it whole.
    ['grows', (f) => appendFileSync(f, Buffer.alloc(DEFAULT_PART_SIZE + MiB)), 'more bytes, 4096 when listed'],
    ['shrinks', (f) => truncateSync(f, 100), '100 bytes, 4096 when listed'],
  ]
  for (const [what, change, counts] of cases) {
    const dir = tempDir(t)
    writeRandom(path.join(dir, 'a.bin'), 1000)
    const log = path.join(dir, 'log.txt')
    writeRandom(log, 4096)
    // Its requests are held until the file has changed; the first (the bucket's check) comes once the tree is listed.
    const proxy = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
    t.teardown(() => proxy.close())
    proxy.stall(600_000)
    const done = o3upload([dir, `o3://${bucket}/changed-${what}`], { ...serverEnv(info), O3_ENDPOINT: proxy.endpoint })
    await until(() => proxy.connections > 0, 'o3upload to list the tree')
    change(log)
    proxy.clear()
    const r = await done
    t.equal(r.code, ExitCode.usage, `${what}: ${r.stderr}`)
    t.same(
      r.stderr.split('\n').filter((l) => l.startsWith('o3upload:')),
      [`o3upload: ${log} changed while it was uploaded (${counts}); run o3upload again once it is written`],
      `${what}: one line naming the file`,
    )
    const client = openClient(t, info, `${bucket}/changed-${what}`)
    t.same(await keys(client), ['a.bin', sidecarKeyOf('a.bin')], `${what}: the file before it is stored; it, a sidecar for it and the manifest are not`)
  }
})

t.test('a second SIGINT aborts the file in flight: exit 130, no parts, no object, no sidecar', async (t) => {
  const dir = tempDir(t)
  writeRandom(path.join(dir, 'huge.bin'), 96 * MiB)
  // Requests go through a proxy that can hold them, so that the upload is surely in flight: its 1 s
  // latency with at most 1 MiB held per connection lets each part through at 1 MiB/s at most.
  const proxy = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => proxy.close())
  proxy.setLatency(1000)
  const client = openClient(t, info, `${bucket}/sigint`)
  let child: ChildProcess | undefined
  let said = ''
  const done = o3upload([dir, `o3://${bucket}/sigint`], { ...serverEnv(info), O3_ENDPOINT: proxy.endpoint }, (c) => {
    child = c
    c.stderr!.on('data', (d: Buffer) => (said += d.toString()))
  })
  t.teardown(() => child?.kill('SIGKILL'))
  const deadline = Date.now() + 120_000
  while ((await uploads(client)).length === 0) {
    if (Date.now() > deadline) throw new Error('the multipart upload never started')
    await delay(10)
  }
  // Held until the second signal is in: the file cannot finish uploading in between.
  proxy.stall(600_000)
  child!.kill('SIGINT')
  await until(() => said.includes('stopping after the file in flight'), 'o3upload to take the first signal')
  child!.kill('SIGINT')
  // The upload is aborted by then; the abort itself needs the server.
  await until(() => said.includes('aborting the upload in flight'), 'o3upload to take the second signal')
  proxy.clear()
  const r = await done
  t.equal(r.code, ExitCode.interrupted, r.stderr)
  t.match(r.stderr, /aborting the upload in flight/)
  t.same(await uploads(client), [], 'the multipart upload was aborted')
  t.same(await keys(client), [], 'neither the object nor a sidecar')
})
