// A server that lies in its answers to ranged GETs (test/support/lying-s3.ts, in front of the
// real one): the whole object with 200, a 206 naming another range, a Content-Length longer than
// the range. Through the mount's files a lie is never data: reads return the right bytes (the
// lie is retried) or fail with EIO, the mount lives on, and nothing a lie carried is cached. The
// checkpoint reader (the SDK's ranged GETs) holds to the same.
import { createHash, randomBytes } from 'node:crypto'
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { readFile, stat } from 'node:fs/promises'
import path from 'node:path'
import t, { type Test } from 'tap'
import { cliCommand } from '../lib/paths.js'
import { CheckpointWriter } from '../checkpoint/index.js'
import { createBucket, serverClient, serverEnv, useS3Server } from './support/s3-server.js'
import { startLyingS3, type Lie, type LyingS3 } from './support/lying-s3.js'
import { logWhen, mount, type Mounted } from './support/o3mount.js'
import { readAll } from './support/objects.js'
import { syntheticState, tempDir } from './fixtures/ckpt.js'

const MiB = 1 << 20
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const BUCKET = `mount-lies-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
const client = serverClient(info, BUCKET)
t.teardown(() => client.close())

/** Every object the tests put, by request path, for the lies that need their bytes. */
const objects = new Map<string, Buffer>()
async function put(key: string, body: Buffer): Promise<void> {
  await client.put(key, body)
  objects.set(`/${BUCKET}/${key}`, body)
}

async function lyingServer(t: Test): Promise<LyingS3> {
  const lying = await startLyingS3({ target: info.endpoint, objectBytes: (p) => objects.get(p) })
  t.teardown(() => lying.close())
  return lying
}

/** The mount answers: its process runs and a stat of its root comes back. */
async function alive(t: Test, m: Mounted): Promise<void> {
  t.equal(m.child.exitCode, null, `the mount process runs: ${m.log().slice(-2000)}`)
  t.ok((await stat(m.mountpoint)).isDirectory(), 'and answers')
}

for (const lie of ['whole', 'other-range', 'long-length'] as const satisfies readonly Lie[]) {
  t.test(`${lie}: lied to twice, the read retries and returns the right bytes; the mount lives`, async (t) => {
    const key = `lies/${lie}.bin`
    const body = randomBytes(4 * MiB + 12345)
    await put(key, body)
    const lying = await lyingServer(t)
    const m = await mount(t, info, BUCKET, { env: { O3_ENDPOINT: lying.endpoint } })
    lying.lie(lie, { count: 2, path: new RegExp(`/${key}$`) })
    const got = await readFile(path.join(m.mountpoint, key)).catch((err: NodeJS.ErrnoException) => err)
    t.equal(lying.told, 2, 'the server lied twice')
    t.notOk(got instanceof Error, `read: ${(got as Error).message}`)
    if (!(got instanceof Error)) t.equal(sha256(got), sha256(body), 'exact bytes')
    await alive(t, m)
  })
}

t.test('a server that always lies: EIO, the mount lives, and no lie was cached', async (t) => {
  const key = 'lies/always.bin'
  const body = randomBytes(3 * MiB)
  await put(key, body)
  await put('lies/honest.bin', randomBytes(MiB))
  const lying = await lyingServer(t)
  // Two attempts per request rather than the default five: the same lies, without 10-20 s of backoff per block.
  const m = await mount(t, info, BUCKET, { env: { O3_ENDPOINT: lying.endpoint, O3_MAX_ATTEMPTS: '2' } })
  lying.lie('other-range', { count: Infinity, path: /\/always\.bin$/ })
  await t.rejects(readFile(path.join(m.mountpoint, key)), { code: 'EIO' }, 'EIO, never the bytes of another range')
  t.ok(lying.told >= 2, `every attempt was lied to (${lying.told})`)
  t.match(await logWhen(m, /after 2 attempts/), /after 2 attempts/, 'O3_MAX_ATTEMPTS set how often the mount asked')
  t.notMatch(m.log(), /after [3-9] attempts/)
  await alive(t, m)
  t.equal(sha256(await readFile(path.join(m.mountpoint, 'lies/honest.bin'))), sha256(objects.get(`/${BUCKET}/lies/honest.bin`)!), 'other files read')
  lying.clear()
  t.equal(sha256(await readFile(path.join(m.mountpoint, key))), sha256(body), 'once the server is honest, the right bytes: nothing it lied was kept')
  t.match(m.log(), /block fetch failed/)
})

t.test('an object listed as older than 1970: its lookup fails with EIO, the mount lives and serves the rest', async (t) => {
  const key = 'lies/old/before-1970.bin'
  const honest = 'lies/old/honest.bin'
  const body = randomBytes(MiB)
  await put(key, randomBytes(4096))
  await put(honest, body)
  const lying = await lyingServer(t)
  lying.lie('before-1970', { count: Infinity, path: /\/before-1970\.bin$/ })
  const m = await mount(t, info, BUCKET, { env: { O3_ENDPOINT: lying.endpoint } })
  // The native side takes no time before the epoch: the answer is refused there, which once
  // ended the mount (an unhandled rejection) and now fails this one lookup.
  await t.rejects(stat(path.join(m.mountpoint, key)), { code: 'EIO' })
  t.ok(lying.told >= 1, `the server lied (${lying.told})`)
  t.match(await logWhen(m, /an answer was refused/), /an answer was refused/)
  t.match(m.log(), /before-1970\.bin: the byte path refused the answer: mtimeMs must not be negative/, 'the log names the file and why')
  await alive(t, m)
  t.equal(sha256(await readFile(path.join(m.mountpoint, honest))), sha256(body), 'the other file reads')
})

t.test('a listing page that comes back empty but truncated settles no name: the file is found', async (t) => {
  const key = 'lies/empty/found.bin'
  const body = randomBytes(64 << 10)
  await put(key, body)
  const lying = await lyingServer(t)
  lying.lie('empty-page', { count: Infinity, path: new RegExp(`^/${BUCKET}/lies/empty/$`) })
  const m = await mount(t, info, BUCKET, { env: { O3_ENDPOINT: lying.endpoint } })
  // Taken as the directory's last page, the empty page made every name in it ENOENT for the TTL.
  t.equal((await stat(path.join(m.mountpoint, key))).size, body.length)
  t.ok(lying.told >= 1, `the server answered an empty page (${lying.told})`)
  t.equal(sha256(await readFile(path.join(m.mountpoint, key))), sha256(body))
})

/** CPU seconds (user + system) and peak RSS of a process, from /proc. */
function usage(pid: number): { cpuSeconds: number; peakRssKiB: number } {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
  const peak = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return { cpuSeconds: (Number(fields[11]) + Number(fields[12])) / 100, peakRssKiB: Number(peak?.[1]) }
}

t.test('a 500 with a 32 MiB chunked error body: EIO after the retries, in little CPU and memory', async (t) => {
  const key = 'lies/error.bin'
  const body = randomBytes(MiB)
  await put(key, body)
  const lying = await lyingServer(t)
  // Three attempts: 96 MiB of error bodies, still more than the bound below if they were kept whole.
  const m = await mount(t, info, BUCKET, { env: { O3_ENDPOINT: lying.endpoint, O3_MAX_ATTEMPTS: '3' } })
  await stat(path.join(m.mountpoint, key))
  const before = usage(m.pid)
  lying.lie('error-500-chunked', { count: Infinity, path: /\/error\.bin$/ })
  await t.rejects(readFile(path.join(m.mountpoint, key)), { code: 'EIO' })
  const after = usage(m.pid)
  t.ok(lying.told >= 3, `every attempt got the 32 MiB error (${lying.told})`)
  // Each error body kept whole and concatenated again on every read cost seconds of CPU and hundreds of MiB.
  t.ok(after.cpuSeconds - before.cpuSeconds < 10, `the mount spent ${(after.cpuSeconds - before.cpuSeconds).toFixed(2)} s of CPU on ${lying.told} error bodies`)
  t.ok(after.peakRssKiB - before.peakRssKiB < 64 << 10, `its peak RSS grew by ${((after.peakRssKiB - before.peakRssKiB) / 1024).toFixed(1)} MiB`)
  t.match(await logWhen(m, /InternalError/), /InternalError/, "the error's code was read from the body")
  await alive(t, m)
  lying.clear()
  t.equal(sha256(await readFile(path.join(m.mountpoint, key))), sha256(body))
})

t.test('the checkpoint reader (SDK ranged GETs) retries a lie and returns verified bytes', async (t) => {
  const location = `${BUCKET}/runs/r`
  const runClient = serverClient(info, location)
  t.teardown(() => runClient.close())
  await (
    await CheckpointWriter.open(runClient, { localDir: tempDir(t), signer: null })
  ).save(syntheticState([MiB, 64 << 10]), { step: 1, epoch: 0, model: 'm' })
  for (const key of ['checkpoints/step-0000000001.safetensors', 'checkpoints/step-0000000001.safetensors.cid', 'manifest.json', 'latest'])
    objects.set(`/${location}/${key}`, await readAll(runClient, key))
  const lying = await lyingServer(t)
  const cli = cliCommand('checkpoint/cli.ts')
  const o3ckpt = (endpoint: string, ...args: string[]) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
      execFile(
        process.execPath,
        [...cli.execArgv, cli.file, ...args],
        { env: { PATH: process.env.PATH, HOME: process.env.HOME, ...serverEnv(info), O3_ENDPOINT: endpoint } },
        (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stdout, stderr }),
      ),
    )
  const honest = await o3ckpt(info.endpoint, 'show', `o3://${location}`, 'latest')
  t.equal(honest.code, 0, honest.stderr)
  // show reads the safetensors header with two small ranged GETs; the first gets another range.
  lying.lie('other-range', { path: /\.safetensors$/ })
  const shown = await o3ckpt(lying.endpoint, 'show', `o3://${location}`, 'latest')
  t.equal(lying.told, 1)
  t.equal(shown.code, 0, `show: ${shown.stderr}`)
  t.equal(shown.stdout, honest.stdout, 'the same header as from the honest server')
  // get streams the data; its one GET gets a body longer than the range.
  lying.lie('long-length', { path: /\.safetensors$/ })
  const out = path.join(tempDir(t), 'x.safetensors')
  const got = await o3ckpt(lying.endpoint, 'get', `o3://${location}`, 'latest', '-o', out)
  t.equal(lying.told, 2)
  t.equal(got.code, 0, `get: ${got.stderr}`)
  t.equal(sha256(await readFile(out).catch(() => Buffer.alloc(0))), sha256(objects.get(`/${location}/checkpoints/step-0000000001.safetensors`)!))
})
