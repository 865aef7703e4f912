import { createHash } from 'node:crypto'
import { readFileSync, readdirSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { CID_BLOCK_SIZE, digestContent } from '../lib/content/cid.js'
import { uploadBufferBytes } from '../lib/content/hashed-upload.js'
import { BLOCKS_IN_FLIGHT } from '../lib/content/thread-hasher.js'
import { O3Client, O3IntegrityError, O3NotFoundError, O3StreamError, type CompletedPart } from '../lib/o3/index.js'
import { CheckpointStore, CheckpointWriter, dataKey, sidecarKey, type StateTensor } from '../checkpoint/index.js'
import { createBucket, useS3Server } from './support/s3-server.js'
import { capture, openClient, runSaveChild, syntheticState, tempDir } from './fixtures/ckpt.js'
import { keys, readAll, uploads } from './support/objects.js'

const MiB = 1 << 20
const info = await useS3Server(t)
const bucket = `ckpt-save-${process.pid}`
await createBucket(info, bucket)

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const meta = (step: number) => ({ step, epoch: Math.floor(step / 100), model: 'test-model', config: { width: 8 }, dataPosition: { batch: step } })

const ROUND_TRIPS = [
  // Large tensors: most parts are sent straight from the tensors' memory.
  { what: '384 MiB in 4 large tensors', tensorsKiB: [200 << 10, 120 << 10, 63 << 10, 1 << 10] },
  // Small tensors: nearly every part straddles tensors and is copied into the buffer pool.
  { what: '240 MiB in 240 tensors of 1 MiB + 4 KiB', tensorsKiB: Array.from({ length: 240 }, () => 1028) },
]

for (const { what, tensorsKiB } of ROUND_TRIPS) {
  t.test(`round trip of ${what} in a child process: bounded RSS, verified restore`, async (t) => {
    const location = `${bucket}/big-${tensorsKiB.length}`
    const localDir = tempDir(t)
    const partSize = 16 * MiB
    const parallel = 4
    const out = await runSaveChild(info, { location, localDir, step: 500, tensorsKiB, partSize, parallel })
    if (out.code !== 0) t.comment(out.stderr)
    t.equal(out.code, 0, 'the save child exits cleanly')
    const r = out.result!
    const extra = r.peakRssMiB - r.baselineRssMiB
    // What the README promises: the upload's own buffers, whatever the state's size.
    const buffers = uploadBufferBytes(partSize, parallel) / MiB
    // Of those, the event loop's: the part pool and the blocks queued for the hashing thread (the
    // leaf copies are made on that thread). Its other ArrayBuffers are the ~25 responses of a save,
    // a few KiB each: 1 MiB covers them uncollected.
    const eventLoopBuffers = (partSize * (parallel + 1) + BLOCKS_IN_FLIGHT * CID_BLOCK_SIZE) / MiB
    t.comment(
      `${what}: baseline RSS ${r.baselineRssMiB.toFixed(0)} MiB, peak ${r.peakRssMiB.toFixed(0)} MiB, extra ${extra.toFixed(1)} MiB ` +
        `(buffers at most ${buffers} MiB; event loop ArrayBuffers grew ${r.peakArrayBuffersMiB.toFixed(1)} MiB)`,
    )
    t.ok(
      r.peakArrayBuffersMiB <= eventLoopBuffers + 1,
      `the writer holds no more than it says: ${r.peakArrayBuffersMiB.toFixed(1)} <= ${eventLoopBuffers} + 1 MiB`,
    )
    // On top of the buffers, what does not grow with the state: the two JS heaps and allocator
    // rounding. Measured here at most 4.3 MiB (the event loop's heapTotal growth during a save) +
    // 4 MiB (the hashing thread's: 14 MiB for hashing alone less its 10 MiB of buffers); HEAPS is
    // twice their sum, for the run-to-run spread of when V8 collects.
    const HEAPS = 2 * (4.3 + 4)
    t.ok(extra <= buffers + HEAPS, `peak extra RSS ${extra.toFixed(1)} MiB within ${buffers} + ${HEAPS.toFixed(1)} MiB`)

    const client = openClient(t, info, location)
    const store = new CheckpointStore(client)
    const loaded = await store.load('latest')
    t.equal(loaded.entry.cid, r.cid)
    t.same(Object.fromEntries(loaded.tensors.map((x) => [x.name, sha(x.data)])), r.tensors, 'every tensor comes back bit for bit')
    t.same(loaded.meta, { step: 500, epoch: 1, model: 'synthetic', config: { tensors: tensorsKiB.length }, dataPosition: { batch: 500 } })
    t.equal((await store.resolve(r.cid)).name, 'step-0000000500', 'by CID')
    t.equal((await store.resolve('step-0000000500.safetensors')).cid, r.cid, 'by name')
    const local = readFileSync(path.join(localDir, 'step-0000000500.safetensors.cid'), 'utf8')
    t.equal(local.split('\n')[0], r.cid, 'the local sidecar starts with the CID')
    t.same(await uploads(client), [])
  })
}

t.test('the recorded CID and sha256 are those of the stored bytes', async (t) => {
  const client = openClient(t, info, `${bucket}/digest`)
  const writer = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, parallel: 2, signer: null })
  const saved = await writer.save(syntheticState([7 * MiB, 3 * MiB + 12]), meta(1))
  const bytes = await readAll(client, dataKey('step-0000000001'))
  const d = await digestContent(bytes)
  t.same(d, { cid: saved.record.cid, sha256: sha(bytes), size: bytes.length })
  t.equal(saved.record.size, bytes.length)
})

t.test('a flipped byte is detected; resume falls back to the previous checkpoint with a warning', async (t) => {
  const client = openClient(t, info, `${bucket}/flip`)
  const { logger, warnings } = capture()
  const writer = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, parallel: 2, signer: null, logger })
  const s1 = syntheticState([6 * MiB])
  await writer.save(s1, meta(100))
  await writer.save(syntheticState([6 * MiB]), meta(200))
  const key = dataKey('step-0000000200')
  const bytes = await readAll(client, key)
  bytes[bytes.length - 1000]! ^= 0x01
  await client.put(key, bytes)

  const store = new CheckpointStore(client, logger)
  await t.rejects(store.load('latest'), O3IntegrityError)
  const v = await store.verify((await store.readManifest()).checkpoints[1]!)
  t.equal(v.ok, false)
  const resumed = await store.resume()
  t.equal(resumed?.entry.name, 'step-0000000100')
  t.equal(sha(resumed!.tensors[0]!.data), sha(s1[0]!.data))
  t.ok(
    warnings().some((w) => w.checkpoint === 'step-0000000200'),
    'the skipped checkpoint is named in a warning',
  )
})

t.test('resume of a run with nothing committed is a fresh start', async (t) => {
  const store = new CheckpointStore(openClient(t, info, `${bucket}/empty`))
  t.equal(await store.resume(), undefined)
  await t.rejects(store.load('latest'), O3NotFoundError)
})

t.test('cancel midway aborts the multipart upload: no parts, no object, latest unchanged', async (t) => {
  const client = openClient(t, info, `${bucket}/cancel`)
  const controller = new AbortController()
  const writer = await CheckpointWriter.open(client, {
    localDir: tempDir(t),
    partSize: 5 * MiB,
    parallel: 2,
    signer: null,
    onStep: (step, name) => {
      if (step === 'part' && name === 'step-0000000002') controller.abort(new Error('cancelled by test'))
    },
  })
  await writer.save(syntheticState([MiB]), meta(1))
  const before = await keys(client)
  await t.rejects(writer.save(syntheticState([40 * MiB]), meta(2), { signal: controller.signal }))
  t.same(await uploads(client), [], 'no multipart upload left')
  t.same(await keys(client), before, 'no new object')
  t.equal((await new CheckpointStore(client).readLatest())?.name, 'step-0000000001')
})

t.test('a failing part aborts the upload', async (t) => {
  class FlakyClient extends O3Client {
    override async uploadPart(key: string, uploadId: string, n: number, body: Buffer, signal?: AbortSignal): Promise<CompletedPart> {
      if (n === 3) throw new O3StreamError('injected part failure')
      return super.uploadPart(key, uploadId, n, body, signal)
    }
  }
  const base = openClient(t, info, `${bucket}/flaky`)
  const client = new FlakyClient(base.scope, { config: base.config })
  t.teardown(() => client.close())
  const writer = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, parallel: 2, signer: null })
  await t.rejects(writer.save(syntheticState([30 * MiB]), meta(3)), O3StreamError)
  t.same(await uploads(client), [])
  t.same(await keys(client), [])
})

t.test('retention keeps the last N and every Kth, deleting data, sidecar and manifest entry together', async (t) => {
  const client = openClient(t, info, `${bucket}/retention`)
  const localDir = tempDir(t)
  const writer = await CheckpointWriter.open(client, { localDir, partSize: 5 * MiB, parallel: 2, signer: null, keepLast: 2, keepEvery: 3 })
  for (let seq = 1; seq <= 7; seq++) await writer.save(syntheticState([64 * 1024]), meta(seq * 10))
  const kept = ['step-0000000030', 'step-0000000060', 'step-0000000070']
  const manifest = await new CheckpointStore(client).readManifest()
  t.same(
    manifest.checkpoints.map((e) => e.name),
    kept,
  )
  t.same(await keys(client), [...kept.flatMap((n) => [dataKey(n), sidecarKey(n)]), 'latest', 'manifest.json'].sort())
  t.same(
    readdirSync(localDir).sort(),
    kept.map((n) => `${n}.safetensors.cid`),
  )
})

t.test('async save: returns while the upload runs, one upload at a time, flush reports the result', async (t) => {
  const client = openClient(t, info, `${bucket}/async`)
  // Every commit step of every save, and the moments the caller gets control back, in order.
  const events: string[] = []
  const writer = await CheckpointWriter.open(client, {
    localDir: tempDir(t),
    partSize: 5 * MiB,
    parallel: 2,
    signer: null,
    onStep: (step, name) => events.push(`${name} ${step}`),
  })
  const s1 = syntheticState([48 * MiB])
  await writer.saveAsync(s1, meta(1))
  events.push('first saveAsync returned')
  t.notOk(events.includes('step-0000000001 latest'), 'the first save is not committed when saveAsync returns')
  t.equal(await new CheckpointStore(client).readLatest(), undefined, 'not committed yet when saveAsync returns')
  // Training would go on here; the next save waits for the first upload.
  const s2: StateTensor[] = syntheticState([MiB])
  await writer.saveAsync(s2, meta(2))
  events.push('second saveAsync returned')
  const done = await writer.flush()
  t.equal(done?.entry.name, 'step-0000000002')
  const at = (e: string) => events.indexOf(e)
  t.ok(at('step-0000000001 latest') > at('first saveAsync returned'), 'the first upload went on after saveAsync returned')
  t.ok(at('step-0000000001 latest') < at('second saveAsync returned'), 'the second saveAsync returned only once the first was committed')
  const firstOfSecond = events.findIndex((e) => e.startsWith('step-0000000002 '))
  t.ok(firstOfSecond > at('step-0000000001 latest'), `the uploads did not overlap: ${events.join(', ')}`)
  t.same(
    (await new CheckpointStore(client).readManifest()).checkpoints.map((e) => e.name),
    ['step-0000000001', 'step-0000000002'],
  )
  t.equal(await writer.flush(), undefined)
})

t.test('a step is saved once', async (t) => {
  const client = openClient(t, info, `${bucket}/twice`)
  const writer = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, parallel: 1, signer: null })
  await writer.save(syntheticState([1024]), meta(5))
  await t.rejects(writer.save(syntheticState([1024]), meta(5)), /already exists/)
})
