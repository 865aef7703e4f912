import t from 'tap'
import { O3IntegrityError, type O3Client } from '../lib/o3/index.js'
import { CheckpointStore, CheckpointWriter, dataKey, sidecarKey, type CommitStep, type Manifest } from '../checkpoint/index.js'
import { createBucket, createVersionedBucket, useS3Server } from './support/s3-server.js'
import { readAll } from './support/objects.js'
import { capture, openClient, runSaveChild, syntheticState, tempDir } from './fixtures/ckpt.js'

const MiB = 1 << 20
const info = await useS3Server(t)
const bucket = `ckpt-crash-${process.pid}`
await createBucket(info, bucket)

const STEPS: CommitStep[] = ['part', 'data', 'sidecar', 'manifest', 'latest']

for (const crashAt of STEPS) {
  t.test(`killed right after "${crashAt}": latest stays on a complete checkpoint, the next writer cleans up`, async (t) => {
    const location = `${bucket}/after-${crashAt}`
    const localDir = tempDir(t)
    const client = openClient(t, info, location)
    const first = await (
      await CheckpointWriter.open(client, { localDir, partSize: 5 * MiB, parallel: 2, signer: null })
    ).save(syntheticState([2 * MiB]), { step: 100, epoch: 0, model: 'm' })

    const out = await runSaveChild(info, { location, localDir, step: 200, tensorsKiB: [12 << 10], partSize: 5 * MiB, parallel: 2, crashAt })
    t.equal(out.signal, 'SIGKILL', 'the child died at the injected point')

    const committed = crashAt === 'latest' ? 'step-0000000200' : 'step-0000000100'
    const store = new CheckpointStore(client)
    t.equal((await store.readLatest())?.name, committed, `latest names ${committed}`)
    const resumed = await store.resume()
    t.equal(resumed?.entry.name, committed, 'resume verifies and loads it')
    if (crashAt !== 'latest') t.equal(resumed?.entry.cid, first.record.cid)

    if (crashAt === 'part') {
      const pending: string[] = []
      for await (const u of client.listMultipartUploads('')) pending.push(u.key)
      t.same(pending, [dataKey('step-0000000200')], 'the killed save left its multipart upload behind')
    }
    const writer = await CheckpointWriter.open(client, { localDir, partSize: 5 * MiB, parallel: 2, signer: null })
    const left: string[] = []
    for await (const u of client.listMultipartUploads('')) left.push(u.key)
    t.same(left, [], 'no multipart upload survives the next open')
    const objects: string[] = []
    for await (const o of client.list('checkpoints/')) if (o.type === 'object') objects.push(o.key)
    const names = writer.checkpoints.map((e) => e.name)
    // A save killed after its manifest entry is complete: the next writer keeps what the manifest names.
    t.same(
      names,
      crashAt === 'manifest' || crashAt === 'latest' ? ['step-0000000100', 'step-0000000200'] : ['step-0000000100'],
      'the manifest keeps its checkpoints',
    )
    t.same(objects.sort(), names.flatMap((n) => [dataKey(n), sidecarKey(n)]).sort(), "only the manifest's checkpoints remain")
    if (crashAt !== 'latest') {
      await writer.save(syntheticState([MiB]), { step: 200, epoch: 0, model: 'm' })
      t.equal((await store.readLatest())?.name, 'step-0000000200', 'the interrupted step can be saved again')
    }
  })
}

t.test('a missing or malformed latest: the next writer deletes nothing and resume takes the newest verified checkpoint', async (t) => {
  const client = openClient(t, info, `${bucket}/latest-lost`)
  const localDir = tempDir(t)
  const first = await CheckpointWriter.open(client, { localDir, partSize: 5 * MiB, signer: null })
  const saved = [
    await first.save(syntheticState([MiB]), { step: 100, epoch: 0, model: 'm' }),
    await first.save(syntheticState([MiB]), { step: 200, epoch: 0, model: 'm' }),
  ]
  const manifest = (await readAll(client, 'manifest.json')).toString('utf8')
  const everything = async () => {
    const out: string[] = []
    for await (const o of client.list('')) if (o.type === 'object' && o.key !== 'latest') out.push(o.key)
    return out.sort()
  }
  const before = await everything()
  for (const [what, latest] of [
    ['deleted', undefined],
    ['malformed', '{"version":1,"name":'],
    ['naming a checkpoint the manifest lacks', JSON.stringify({ version: 1, name: 'step-0000000300', cid: saved[0]!.record.cid, seq: 3, time: 'x' })],
  ] as const) {
    if (latest === undefined) await client.delete('latest')
    else await client.put('latest', latest)
    // What o3train --resume auto does: open the run's writer, then resume through its store.
    const { logger, warnings } = capture()
    const writer = await CheckpointWriter.open(client, { localDir, partSize: 5 * MiB, signer: null, logger })
    t.same(
      writer.checkpoints.map((e) => e.name),
      ['step-0000000100', 'step-0000000200'],
      `latest ${what}: the writer keeps both checkpoints`,
    )
    t.equal((await readAll(client, 'manifest.json')).toString('utf8'), manifest, `latest ${what}: manifest.json untouched`)
    t.same(await everything(), before, `latest ${what}: no object deleted`)
    const resumed = await writer.store.resume()
    t.equal(resumed?.entry.name, 'step-0000000200', `latest ${what}: resumes from the newest checkpoint`)
    t.equal(resumed?.entry.cid, saved[1]!.record.cid)
    t.ok(
      warnings().some((w) => /latest/.test(w.msg) && /newest/.test(w.msg)),
      `latest ${what}: says so: ${JSON.stringify(warnings())}`,
    )
  }
  // The newest that verifies: with step 200's bytes replaced, resume falls back to step 100.
  await client.delete('latest')
  await client.put(dataKey('step-0000000200'), Buffer.alloc(saved[1]!.record.size, 7))
  const writer = await CheckpointWriter.open(client, { localDir, partSize: 5 * MiB, signer: null })
  t.equal((await writer.store.resume())?.entry.name, 'step-0000000100', 'a checkpoint that fails verification is skipped')
  t.same(
    (JSON.parse((await readAll(client, 'manifest.json')).toString('utf8')) as Manifest).checkpoints.map((e) => e.name),
    ['step-0000000100', 'step-0000000200'],
    'and still not deleted',
  )
})

/** A commit that fails right after `step`, as a kill there leaves the bucket. */
const failAfter = (at: CommitStep) => (step: CommitStep) => {
  if (step === at) throw new Error(`failed after ${at}`)
}
const meta = (step: number) => ({ step, epoch: 0, model: 'm' })
const names = (m: { checkpoints: readonly { name: string }[] }) => m.checkpoints.map((e) => e.name)
async function objectKeys(client: O3Client): Promise<string[]> {
  const out: string[] = []
  for await (const o of client.list('')) if (o.type === 'object') out.push(o.key)
  return out.sort()
}

t.test('a save killed between its manifest entry and latest stays uncommitted when another step commits, and its step can be saved later', async (t) => {
  const client = openClient(t, info, `${bucket}/orphan-other-step`)
  const opts = { localDir: tempDir(t), partSize: 5 * MiB, signer: null }
  await (await CheckpointWriter.open(client, opts)).save(syntheticState([MiB]), meta(100))
  const killed = await CheckpointWriter.open(client, { ...opts, onStep: failAfter('manifest') })
  await t.rejects(killed.save(syntheticState([MiB]), meta(300)), /failed after manifest/)

  const writer = await CheckpointWriter.open(client, opts)
  await writer.save(syntheticState([MiB]), meta(200))
  const store = new CheckpointStore(client)
  t.same(names(await store.readManifest()), ['step-0000000100', 'step-0000000200'], 'the commit of step 200 leaves the killed save out')
  t.equal((await store.resume())?.entry.name, 'step-0000000200')
  const next = await CheckpointWriter.open(client, opts)
  t.same(
    await objectKeys(client),
    ['latest', 'manifest.json', ...['step-0000000100', 'step-0000000200'].flatMap((n) => [dataKey(n), sidecarKey(n)])].sort(),
    "the next open deletes the killed save's objects",
  )
  await next.save(syntheticState([MiB]), meta(300))
  t.equal((await store.readLatest())?.name, 'step-0000000300', 'step 300 saved')
})

for (const versioned of [false, true]) {
  t.test(
    `resumed behind latest${versioned ? ' (versioned bucket)' : ''}: the first save moves latest back before it writes, and replaces what came after`,
    async (t) => {
      const name = `${bucket}-behind${versioned ? '-v' : ''}`
      await (versioned ? createVersionedBucket : createBucket)(info, name)
      const client = openClient(t, info, `${name}/run`)
      const opts = { localDir: tempDir(t), partSize: 5 * MiB, signer: null }
      const first = await CheckpointWriter.open(client, opts)
      for (const step of [1, 2, 3]) await first.save(syntheticState([MiB]), meta(step))
      const store = new CheckpointStore(client)

      // A save that dies before its manifest entry: latest already names where the run went on from.
      const failing = await CheckpointWriter.open(client, { ...opts, onStep: failAfter('data') })
      failing.continueFrom((await store.load('step-0000000001')).entry)
      t.equal((await store.readLatest())?.name, 'step-0000000003', 'nothing moves before a save')
      await t.rejects(failing.save(syntheticState([MiB]), meta(2)), /failed after data/)
      t.equal((await store.readLatest())?.name, 'step-0000000001', 'latest moved back first')
      t.equal((await store.resume())?.entry.name, 'step-0000000001', 'a restart resumes from it')

      const writer = await CheckpointWriter.open(client, opts)
      t.same(names(writer), ['step-0000000001', 'step-0000000002', 'step-0000000003'], 'the later checkpoints stay until a commit')
      writer.continueFrom((await store.resume())!.entry)
      const saved = await writer.save(syntheticState([MiB]), meta(2))
      t.same(names(await store.readManifest()), ['step-0000000001', 'step-0000000002'], 'step 2 replaced, step 3 left out')
      const latest = await store.load('latest')
      t.equal(latest.entry.cid, saved.record.cid, 'latest is the new step 2, verified')
      await CheckpointWriter.open(client, opts)
      t.notOk((await objectKeys(client)).includes(dataKey('step-0000000003')), "the next open deletes step 3's objects")
    },
  )
}

t.test('manifest.json missing from a run with checkpoints: the writer and resume refuse, and nothing is deleted', async (t) => {
  const client = openClient(t, info, `${bucket}/no-manifest`)
  const opts = { localDir: tempDir(t), partSize: 5 * MiB, signer: null }
  const first = await CheckpointWriter.open(client, opts)
  await first.save(syntheticState([MiB]), meta(100))
  await first.save(syntheticState([MiB]), meta(200))
  const latest = (await readAll(client, 'latest')).toString('utf8')
  await client.delete('manifest.json')
  const before = await objectKeys(client)
  for (const [what, pointer, message] of [
    ['latest there', latest, /manifest\.json is missing but latest names step-0000000200: .*\(nothing was deleted\)$/],
    ['latest malformed', '{"version":1,"name":', /manifest\.json is missing but latest exists/],
    ['latest deleted', undefined, /manifest\.json is missing but checkpoints\/ holds the objects of 2 checkpoints/],
  ] as const) {
    if (pointer === undefined) await client.delete('latest')
    else await client.put('latest', pointer)
    await t.rejects(CheckpointWriter.open(client, opts), { constructor: O3IntegrityError, message }, `${what}: the writer refuses`)
    await t.rejects(new CheckpointStore(client).resume(), { constructor: O3IntegrityError, message }, `${what}: so does resume`)
    t.same(
      (await objectKeys(client)).filter((k) => k !== 'latest'),
      before.filter((k) => k !== 'latest'),
      `${what}: nothing deleted`,
    )
  }
  // What a first save killed before its manifest entry leaves: a fresh run, whose writer clears it.
  await client.delete(dataKey('step-0000000200'))
  await client.delete(sidecarKey('step-0000000200'))
  t.equal(await new CheckpointStore(client).resume(), undefined, "one checkpoint's objects alone: a fresh run")
  await CheckpointWriter.open(client, opts)
  t.same(await objectKeys(client), [], 'the writer deletes them')
})

t.test('a manifest that lacks the checkpoint latest names while its objects are there: the writer refuses and deletes nothing', async (t) => {
  const client = openClient(t, info, `${bucket}/manifest-rolled-back`)
  const opts = { localDir: tempDir(t), partSize: 5 * MiB, signer: null }
  const first = await CheckpointWriter.open(client, opts)
  await first.save(syntheticState([MiB]), meta(100))
  const older = await readAll(client, 'manifest.json')
  await first.save(syntheticState([MiB]), meta(200))
  // An older manifest put back: latest names step 200, which it does not list.
  await client.put('manifest.json', older)
  const before = await objectKeys(client)
  await t.rejects(CheckpointWriter.open(client, opts), {
    constructor: O3IntegrityError,
    message:
      /latest names step-0000000200, which manifest\.json does not list, but its objects are there \(checkpoints\/step-0000000200\.safetensors, checkpoints\/step-0000000200\.safetensors\.cid\)/,
  })
  t.same(await objectKeys(client), before, 'nothing deleted')
})
